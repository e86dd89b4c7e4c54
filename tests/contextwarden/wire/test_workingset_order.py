"""What a compaction keeps first: the latest Edit of every file being edited
(``compaction.working_set_latest_edits``)."""

from __future__ import annotations

from contextwarden.wire.workingset import Call, working_set


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


def test_files_touched_by_the_same_message_keep_one_order_in_every_process():
    """Files a message names together tie on their latest touch: they keep the order they were first
    seen in. Ranked from a set, ties followed the interpreter's string hashes, so the summary a
    compaction wrote (and every request's bytes after it) changed from one process to the next."""
    import os
    import subprocess
    import sys

    script = (
        "from contextwarden.wire.workingset import Call, working_set\n"
        "paths = [f'src/module_{k}.py' for k in range(8)]\n"
        "calls = [Call(k, 'Read', {'file_path': p}, k, 'x') for k, p in enumerate(paths)]\n"
        "named = {p: 20 for p in paths}\n"  # one message at order 20 names every file
        "print([c.key for c in working_set(calls, 10_000, lambda c: 1, mentioned=named)])\n")
    got = set()
    for seed in range(6):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)})
        assert out.returncode == 0, out.stderr
        got.add(out.stdout.strip())
    assert got == {str(list(range(8)))}
