"""Real-looking large tool outputs for the compression tests and bench (deterministic)."""

from __future__ import annotations

import json
import random


def failing_pytest(n_tests: int = 1200, failing: tuple[int, ...] = (17, 404, 777, 1100)) -> tuple[str, list[str]]:
    """A verbose pytest run with a few failures (tracebacks, short summary); and the failing test ids."""
    lines = ["============================= test session starts ==============================",
             "platform linux -- Python 3.12.3, pytest-8.3.2, pluggy-1.5.0 -- /repo/.venv/bin/python",
             "cachedir: .pytest_cache", "rootdir: /repo", "configfile: pyproject.toml",
             "plugins: hypothesis-6.112.0, anyio-4.4.0", f"collecting ... collected {n_tests} items", ""]
    names = []
    for i in range(n_tests):
        mod = f"tests/test_mod{i // 100:02d}.py"
        name = f"{mod}::test_case_{i:04d}"
        names.append(name)
        status = "FAILED" if i in failing else "PASSED"
        lines.append(f"{name} {status} [{(i + 1) * 100 // n_tests:3d}%]")
    lines.append("")
    lines.append("=================================== FAILURES ===================================")
    failed = [names[i] for i in failing]
    for i in failing:
        short = f"test_case_{i:04d}"
        lines += [f"_______________________________ {short} ________________________________", "",
                  f"    def {short}():", f"        result = compute({i})", "        assert result.ok",
                  f">       assert result.value == {i * 2}", f"E       assert {i * 2 + 1} == {i * 2}",
                  f"E        +  where {i * 2 + 1} = Result(ok=True, value={i * 2 + 1}).value", "",
                  f"tests/test_mod{i // 100:02d}.py:{40 + i % 60}: AssertionError"]
    lines.append("=========================== short test summary info ============================")
    for i in failing:
        lines.append(f"FAILED {names[i]} - assert {i * 2 + 1} == {i * 2}")
    lines.append(f"================== {len(failing)} failed, {n_tests - len(failing)} passed in 41.27s ===================")
    return "\n".join(lines), failed


def build_log(n: int = 5000, errors: tuple[int, ...] = (1234, 3021, 4500), seed: int = 7) -> tuple[str, list[str]]:
    """A 5,000-line C/C++ build log with progress lines, a few warnings and errors; and the error lines."""
    rnd = random.Random(seed)
    lines, errs = [], []
    for i in range(n):
        if i in errors:
            line = f"src/module_{i}/impl_{i}.c:{rnd.randint(10, 900)}:{rnd.randint(1, 40)}: error: 'widget_{i}' undeclared (first use in this function)"
            errs.append(line)
        elif i % 397 == 5:
            line = f"src/module_{i}/impl_{i}.c:{rnd.randint(10, 900)}:5: warning: unused variable 'tmp_{i}' [-Wunused-variable]"
        else:
            line = f"[{100 * i // n:3d}%] Building C object src/CMakeFiles/core.dir/module_{i}/impl_{i}.c.o"
        lines.append(line)
    lines += ["make[2]: *** [src/CMakeFiles/core.dir/build.make:1234: src/CMakeFiles/core.dir/module_1234/impl_1234.c.o] Error 1",
              "make[1]: *** [CMakeFiles/Makefile2:99: src/CMakeFiles/core.dir/all] Error 2",
              "make: *** [Makefile:136: all] Error 2"]
    return "\n".join(lines), errs


def api_json(n: int = 400, odd: tuple[int, ...] = (123, 321)) -> tuple[str, dict]:
    """A paginated API response (GitHub-like issues) with a couple of items that differ."""
    items = []
    for i in range(n):
        it = {"id": 1000 + i, "number": i + 1, "title": f"Issue number {i + 1} about the parser", "state": "open",
              "user": {"login": f"user{i % 17}", "id": 500 + i % 17}, "labels": [{"name": "bug"}, {"name": "parser"}],
              "comments": i % 5, "created_at": f"2024-03-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
              "body": "Steps to reproduce: run the parser on the attached file and see the output. " * 3}
        if i in odd:
            it = {**it, "state": "error", "error": {"code": 500 + i, "message": f"upstream failure for item {i}"}}
        items.append(it)
    doc = {"total_count": n, "incomplete_results": False, "items": items}
    return json.dumps(doc, indent=2), doc


def recursive_grep(files: int = 120, per_file: int = 9, seed: int = 3) -> tuple[str, dict[str, int]]:
    """``grep -rn`` output: ``path:line:text``; and the match count per file."""
    rnd = random.Random(seed)
    lines, counts = [], {}
    for f in range(files):
        path = f"src/pkg{f % 7}/sub{f % 3}/file_{f}.py"
        k = 1 + (f * 5 + rnd.randint(0, per_file)) % per_file
        counts[path] = k
        for j in range(k):
            ln = 10 + j * rnd.randint(3, 30)
            lines.append(f"{path}:{ln}:    result = parse_config(path_{j}, strict=True)  # match {j}")
    return "\n".join(lines), counts


def cargo_build(chars: int = 100_000, seed: int = 1) -> tuple[str, list[str]]:
    """A build log whose lines nearly all differ (crate names, versions, paths): nothing collapses, so every
    line goes through the log compressor's scan (the synthetic logs above collapse to a few dozen lines).
    Returns the log and its error lines."""
    rnd = random.Random(seed)
    parts = "alpha beta gamma delta parser lexer codegen runtime storage network client server cache index query".split()
    lines: list[str] = []
    errors: list[str] = []
    size = 0
    while size < chars:
        a, b = rnd.sample(parts, 2)
        r = rnd.random()
        if r < 0.01:
            line = f"src/{a}/{b}.rs:{rnd.randint(1, 900)}:{rnd.randint(1, 80)}: error[E0308]: mismatched types in {a}_{b}"
            errors.append(line)
        elif r < 0.04:
            line = f"warning: unused variable `{a}_{b}` in crate {a}"
        else:
            line = (f"   Compiling {a}-{b}-{''.join(rnd.choices('abcdefghij', k=5))} v0.{rnd.randint(1, 9)}.{rnd.randint(0, 30)} "
                    f"(/home/u/proj/{a}/{b})")
        lines.append(line)
        size += len(line) + 1
    lines.append(f"error: could not compile `proj` due to {len(errors)} previous errors")
    return "\n".join(lines), errors


def docs_page(paras: int = 460, seed: int = 5) -> str:
    """A fetched documentation page as text: paragraphs of prose with a few code lines (no log words)."""
    rnd = random.Random(seed)
    topics = "the upload client retries with backoff; the cache keeps entries for an hour; tokens expire daily; " \
             "the index is rebuilt nightly; requests are signed with the account key; pages hold 50 items".split("; ")
    out = []
    for i in range(paras):
        out.append(f"## Section {i}")
        out.append(" ".join(rnd.choice(topics).capitalize() + "." for _ in range(6)))
        if i % 4 == 0:
            out.append(f"    client.configure(section={i}, retries={rnd.randint(1, 6)})")
        out.append("")
    return "\n".join(out)
