"""Test-wide set-up: offline assets from ../shared, a fresh cw_home for every test, and the suite on three workers.

The whole suite (no path on the command line) runs on three pytest-xdist workers (two cores); a file or folder named on the
command line runs in one process (``-n 2`` forces workers, ``-n 0`` none). A file whose tests share a module
fixture (proxies, traces) runs on one worker, so the fixture starts once; so do the files that share tests/e2e's
proxies; any other test goes to whichever worker is free.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import pytest

from contextwarden.memory import service as memory_service

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"
EVAL_DIR = SHARED / "eval"

# tiktoken then never downloads; the embedding model is read from ../shared
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    whole_suite = config.args_source != pytest.Config.ArgsSource.ARGS
    # one more worker than cores: much of the suite waits on the processes it starts (proxies, the engine, the
    # memory process, npm), and a third worker fills those waits (two cores: pytest 9:40 against 10:12-11:36)
    return min(3, (os.cpu_count() or 1) + 1) if whole_suite else 0


@pytest.hookimpl(tryfirst=True)  # before tmp_path's factory reads it
def pytest_configure(config: pytest.Config) -> None:
    # a worker's tmp_path is <run>/popen-gwN/...: 10 characters longer than in one process, which takes a
    # proxy's memory socket under cw_home/run past AF_UNIX's limit; <run>/N/ adds 2
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker and config.option.basetemp:
        config.option.basetemp = str(Path(config.option.basetemp).parent / worker.removeprefix("gw"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The whole suite: the main process installs the two CLIs the e2e tests drive (npm, ~20-30 s each, on a
    clean clone: mostly waiting for the registry) in the background, side by side, while the workers collect
    and run other tests; a test that needs one waits on its install lock (tests/support/claude_code.py)."""
    config = session.config
    if hasattr(config, "workerinput") or config.args_source == pytest.Config.ArgsSource.ARGS or config.option.collectonly:
        return
    from tests.support.claude_code import claude_code_binary
    from tests.support.codex_cli import codex_binary

    def install(find) -> None:
        try:
            find()
        except BaseException:  # noqa: BLE001 - the test that needs the binary calls it again and reports why
            pass
    _INSTALLS[:] = [threading.Thread(target=install, args=(f,), name=f.__name__, daemon=True)
                    for f in (claude_code_binary, codex_binary)]
    for t in _INSTALLS:
        t.start()


_INSTALLS: list[threading.Thread] = []


def pytest_sessionfinish() -> None:
    for t in _INSTALLS:  # (a run that needed neither still leaves no half-done install behind)
        t.join(900)


# tests/e2e/conftest.py's shared proxies: a file that uses one (or picks one with route_for) runs on the same
# worker as the others, so the four start once
FARM_FIXTURES = {"route", "observe_route", "proxy_farm", "observe_reverse", "observe_regular", "active_reverse",
                 "active_regular"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The farm's files are one xdist group, a file's tests that share a module fixture (its proxies) one group
    per file; any other test is a unit of its own that either worker takes. tests/e2e goes first (addopts has
    --no-loadscope-reorder), then the long tests outside it (LONG_OUTSIDE_E2E): the long tests start early,
    the short unit tests even the workers out at the end."""
    farm = {item.nodeid.split("::", 1)[0] for item in items
            if FARM_FIXTURES & set(getattr(item, "fixturenames", ())) or hasattr(getattr(item, "module", None), "route_for")}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path in farm:
            item.add_marker(pytest.mark.xdist_group("e2e-farm"))
        elif _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(path))
    items.sort(key=_start_rank)


# Where the longest tests outside tests/e2e live (replays and evaluations of ../shared's traces, the README's
# terminal, a real proxy under the TUI, the memory process's waits on its idle-priority embedding: 10-40 s each
# on an idle machine): they start right after tests/e2e, so
# that neither worker picks one up last while the other has nothing left to do.
LONG_OUTSIDE_E2E = ("tests/contextwarden/offline/", "tests/test_readme.py", "tests/tui/test_live.py",
                    "tests/contextwarden/memory/test_embedworker.py", "tests/contextwarden/memory/test_process.py")


def _start_rank(item: pytest.Item) -> int:
    """0: tests/e2e, 1: the long tests outside it, 2: the rest (sort is stable: each keeps its file order)."""
    if item.nodeid.startswith("tests/e2e/"):
        return 0
    return 1 if item.nodeid.startswith(LONG_OUTSIDE_E2E) else 2


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


_load_embedder = memory_service.load_embedder


@functools.cache
def _suite_model(model_dir: str, threads: int | None) -> tuple:
    return _load_embedder(model_dir, threads=threads)


def _shared_load_embedder(model_dir, download: bool = True, threads: int | None = None) -> tuple:
    """The memory services a test process builds (every runtime with memory on: hundreds of tests) load
    ../shared's model once (~1 s of CPU each time: the ONNX session and its warm-up) and share it, as the
    Embedder is thread-safe; any other folder (a missing or broken one, Chroma's cache) loads as in the product."""
    if model_dir and Path(model_dir).expanduser().resolve() == MODEL_DIR:
        emb, message = _suite_model(str(model_dir), threads)
        if emb is not None:
            return emb, message
    return _load_embedder(model_dir, download, threads)


@pytest.fixture(autouse=True, scope="session")
def _one_model_per_process():
    memory_service.load_embedder = _shared_load_embedder
    yield
    memory_service.load_embedder = _load_embedder


@pytest.fixture(autouse=True)
def cw_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cw-home"
    home.mkdir()
    monkeypatch.setenv("CONTEXTWARDEN_HOME", str(home))
    return home


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing at {SHARED}: tests read offline assets and eval data from it")
    return SHARED
