"""What a compaction keeps first: the latest Edit of every file being edited
(``compaction.working_set_latest_edits``)."""

from __future__ import annotations

from contextwarden.workingset import Call, working_set


def _c(order, tool, path, key=None):
    return Call(order, tool, {"file_path": path}, key if key is not None else order, "x")


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
