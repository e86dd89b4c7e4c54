"""``contextwarden sessions | stats | memory export|import|prune|delete`` on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from contextwarden.cli import main
from tests.support.memstore import item, store

ROOT = str(Path(__file__).resolve().parents[3])


def _fill(home):
    s = store(home)
    now = time.time()
    s.add([item("we chose sqlite", session="alpha", turn=0, ts=now - 60),
           item("pytest: 3 failed", session="alpha", turn=1, role="tool", kind="tool_result", tool="Bash", ts=now - 50),
           item("ancient history", session="beta", tenant="t-b", ts=now - 400 * 86400)])
    s.close()


def test_sessions_and_stats(cw_home, capsys):
    _fill(cw_home)
    assert main(["sessions", "--home", str(cw_home)]) == 0
    out = capsys.readouterr().out
    assert "SESSION" in out and "alpha" in out and "beta" in out and "Bash" in out
    assert main(["sessions", "--home", str(cw_home), "--json", "--tenant", "t-a"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["session"], r["items"], r["turns"]) for r in rows] == [("alpha", 2, 2)]
    assert main(["stats", "--home", str(cw_home), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["items"], st["sessions"], st["tenants"]) == (3, 2, {"t-a": 2, "t-b": 1})
    assert main(["stats", "--home", str(cw_home)]) == 0
    out = capsys.readouterr().out
    assert "items      3" in out and "ttl" in out


def test_empty_home_says_so(cw_home, capsys):
    assert main(["sessions", "--home", str(cw_home)]) == 0
    assert "no memory stored" in capsys.readouterr().err


def test_export_import_prune_delete(cw_home, tmp_path, capsys):
    _fill(cw_home)
    f = tmp_path / "m.jsonl"
    assert main(["memory", "export", str(f), "--home", str(cw_home)]) == 0
    assert len(f.read_bytes().splitlines()) == 3
    other = tmp_path / "other-home"
    assert main(["memory", "import", str(f), "--home", str(other)]) == 0
    assert "imported 3 new items" in capsys.readouterr().out
    assert main(["memory", "prune", "--home", str(other)]) == 0  # default: the profile's ttl_days (30)
    assert "pruned 1 items older than 30 days" in capsys.readouterr().out
    assert main(["memory", "delete", "--session", "alpha", "--home", str(other)]) == 0
    assert "deleted 2 items of session alpha" in capsys.readouterr().out
    assert main(["stats", "--home", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 0
    assert main(["memory", "prune", "--days", "0", "--home", str(cw_home)]) == 0
    assert "pruned 3 items" in capsys.readouterr().out


def test_write_commands_refuse_while_another_process_writes(cw_home):
    _fill(cw_home)
    s = store(cw_home)  # this process plays the running proxy
    env = dict(os.environ)
    run = lambda *a: subprocess.run([sys.executable, "-m", "contextwarden", *a, "--home", str(cw_home)],
                                    capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    r = run("memory", "delete", "--session", "alpha")
    assert r.returncode == 1 and f"in use by process {os.getpid()}" in r.stderr and "chroma_url" in r.stderr
    r = run("sessions", "--json")  # reading is allowed
    assert r.returncode == 0 and "alpha" in r.stdout
    s.close()
    r = run("memory", "delete", "--session", "alpha")
    assert r.returncode == 0 and "deleted 2 items" in r.stdout


def test_help_states_the_one_writer_rule(capsys):
    try:
        main(["memory", "prune", "--help"])
    except SystemExit:
        pass
    assert "one writer process" in capsys.readouterr().out
