"""The README's commands copy-paste: its "Try it locally" block runs as written, in a new terminal's
environment (no virtualenv on PATH; its demo shows clearing, compaction and recall and leaves no process
behind), every ``contextwarden`` subcommand its shell blocks name exists, and `make run` finds ../shared's offline assets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from contextwarden.cli import build_parser
from tests.support.marked import run_marked

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_the_try_it_block_runs_as_written_in_a_new_terminal(tmp_path):
    [block] = FENCE.findall(_section("Try it locally"))
    venv = ROOT / ".venv" if (ROOT / ".venv").is_dir() else Path(sys.prefix)  # make's, else the one running
    script = block.replace("source .venv/bin/activate", f"source {venv}/bin/activate")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", CONTEXTWARDEN_HOME=str(tmp_path / "home"))
    done = run_marked(["bash", "-c", "set -euo pipefail\n" + script], env, timeout=600, cwd=ROOT)
    out = done.stdout + done.stderr
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "clearing:" in done.stdout and "claude mcp add contextwarden -- /" in done.stdout, done.stdout[-3000:]
    # what `contextwarden demo --no-tui` printed: clearing, compaction and recall in one command, no error
    demo = done.stdout[done.stdout.index("contextwarden demo: stand-in upstream"):]
    summary = demo.split("contextwarden demo: what the proxy did", 1)[1]
    counts = {line.split(":")[0].strip(): line for line in summary.splitlines() if line.startswith("  ")}
    assert "clearing: 0 steps" not in counts["clearing"] and "compaction: 0 new" not in counts["compaction"], out
    assert "recall: 0 " not in counts["recall"] and counts["errors"].strip() == "errors: 0", out
    assert "proxy overhead" in demo and " tui" in summary
    [data] = re.findall(r"; data in (\S+)", done.stdout)
    assert not (Path(data) / "tui.json").exists()  # the proxy stopped, and removed its own file


def test_every_contextwarden_command_in_the_readme_exists():
    known = set(build_parser()._subparsers._group_actions[0].choices)
    named = {m.group(1) for block in FENCE.findall(README)
             for m in re.finditer(r"(?:^|[\s(])contextwarden ([a-z][a-z-]*)", block, re.M)}
    assert named and named <= known, named - known


def test_the_printed_mcp_command_starts_the_server_without_the_virtualenv_on_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "contextwarden", "mcp", "--print-config"], capture_output=True,
                         text=True, timeout=60).stdout
    line = next(x for x in out.splitlines() if x.startswith("claude mcp add contextwarden -- "))
    cmd = line.split(" -- ", 1)[1].split()
    assert Path(cmd[0]).is_absolute() and cmd[-1] == "mcp"
    init = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
            '"capabilities":{},"clientInfo":{"name":"readme-test","version":"1"}}}\n')
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", CONTEXTWARDEN_HOME=str(tmp_path / "home"))
    done = subprocess.run(cmd, input=init, env=env, capture_output=True, text=True, timeout=120)
    assert '"serverInfo"' in done.stdout and '"id":1' in done.stdout.replace(" ", ""), done.stderr[-2000:]


def _make_run(tmp_path: Path, shared: Path, **env: str) -> dict[str, str]:
    """What ``make run`` hands ``contextwarden run`` (a stand-in that prints the two variables)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "contextwarden").write_text("#!/bin/sh\necho \"tiktoken=$TIKTOKEN_CACHE_DIR\"\n"
                                        "echo \"model=$CONTEXTWARDEN_MEMORY__MODEL_DIR\"\n")
    (bin_ / "contextwarden").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "CONTEXTWARDEN_MEMORY__MODEL_DIR")}
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "run", f"SHARED={shared}", f"BIN={bin_}", "STAMP="],
                         env={**base, **env}, capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_make_run_reads_the_offline_assets_of_shared_when_there(tmp_path):
    """The first of the two commands on an offline machine: ../shared's tokenizer cache and embedding model
    (otherwise token counts are estimates and memory is lexical-only); the environment's own settings win."""
    shared = tmp_path / "shared"
    model = shared / "models" / "all-MiniLM-L6-v2" / "onnx"
    assert _make_run(tmp_path, shared) == {"tiktoken": "", "model": ""}  # nothing there: nothing set
    (shared / "tiktoken").mkdir(parents=True)
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"")
    assert _make_run(tmp_path, shared) == {"tiktoken": str(shared / "tiktoken"), "model": str(model)}
    assert _make_run(tmp_path, shared, TIKTOKEN_CACHE_DIR="/mine") == {"tiktoken": "/mine", "model": str(model)}
