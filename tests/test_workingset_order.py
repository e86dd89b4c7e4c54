"""What a step clears and what a compaction keeps first: the text of the files being edited, last
(``clearing.current_files_last``) and the latest Edit of every file being edited, first
(``compaction.working_set_latest_edits``)."""

from __future__ import annotations

from contextwarden.replay import replay
from contextwarden.workingset import Call, working_set

from .test_fidelity import edit_trace


def _c(order, tool, path, key=None):
    return Call(order, tool, {"file_path": path}, key if key is not None else order, "x")


def _partial_step(trace, first_last: bool):
    """The edit trace (Read a.py, Edit a.py, Read b.py, c.py, d.py, Edit a.py with text of its Read)
    under a clearing step that must free a little at the last request only: one of the two results
    outside the 2 most recent calls (a.py's Read, b.py's Read) goes."""
    base = {"clearing": {"trigger_tokens": 10_000_000, "keep_recent": 2, "clear_all": False}}
    sizes = [r.tokens_original for r in replay(trace, profile="baseline-observation-masking", overrides=base,
                                               turn_hooks=False).results]
    assert sizes[4] < sizes[5] - 1_000
    ov = {"clearing": {**base["clearing"], "trigger_tokens": sizes[5] - 500, "clear_at_least": 0,
                       "min_result_tokens": 100, "current_files_last": first_last}}
    return replay(trace, profile="baseline-observation-masking", overrides=ov, turn_hooks=False)


def test_a_step_clears_the_read_of_a_file_being_edited_last(tmp_path):
    trace = edit_trace(tmp_path / "e.jsonl")
    # oldest first: a.py's Read goes, and the last Edit's old_string with it
    old = _partial_step(trace, False)
    t = old.totals()
    assert old.results[5].tokens_sent < old.results[5].tokens_original and old.results[4].tokens_sent == old.results[4].tokens_original
    assert t["fidelity"]["sources"] == 2 and t["fidelity"]["sources_lost"] == 1
    # the file being edited last: b.py's Read (a file only read) goes instead, as much is freed
    new = _partial_step(trace, True)
    t2 = new.totals()
    assert new.results[5].tokens_sent < new.results[5].tokens_original and t2["sent_invalid"] == 0
    assert t2["fidelity"]["sources"] == 2 and t2["fidelity"]["sources_lost"] == 0
    assert new.results[5].tokens_sent <= old.results[5].tokens_sent + 200  # (b.py and a.py: the same size)


def test_the_latest_edit_of_every_file_being_edited_comes_before_the_files_whole():
    # g.md: read (big), edited twice long ago; then n.py, m.py read and edited (their Reads big too)
    calls = [_c(0, "Read", "g.md"), _c(1, "Edit", "g.md"), _c(2, "Edit", "g.md"),
             _c(3, "Read", "m.py"), _c(4, "Edit", "m.py"), _c(5, "Read", "n.py"), _c(6, "Edit", "n.py")]
    sizes = lambda c: 500 if c.tool == "Read" else 10  # noqa: E731
    # by recency alone, n.py and m.py whole fill the budget: nothing of g.md
    assert [c.key for c in working_set(calls, 1_025, sizes)] == [5, 6, 3, 4]
    # the latest Edits first (within half the budget): g.md keeps the text its next Edits start from
    # (with what is left, its earlier Edit too), m.py its snippet instead of its Read, and the newest
    # file stays whole
    got = working_set(calls, 1_025, sizes, latest_edits=0.5)
    assert [c.key for c in got] == [5, 6, 4, 1, 2]
    assert sum(sizes(c) for c in got) <= 1_025
    # a share too small for any snippet: as without it
    assert working_set(calls, 1_025, sizes, latest_edits=0.001) == working_set(calls, 1_025, sizes)
    # with room for all, the same set either way
    assert {c.key for c in working_set(calls, 5_000, sizes, latest_edits=0.5)} == set(range(7))
