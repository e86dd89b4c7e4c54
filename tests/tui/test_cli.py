"""`contextwarden tui`: arguments, and Textual loaded only when the TUI actually runs."""

from __future__ import annotations

import subprocess
import sys

from contextwarden.cli import build_parser, main


def test_tui_arguments(tmp_path):
    args = build_parser().parse_args(["tui", "--home", str(tmp_path), "--log", str(tmp_path / "e.jsonl"),
                                      "--export-dir", str(tmp_path / "out")])
    assert args.command == "tui" and args.home == tmp_path and args.log == tmp_path / "e.jsonl"
    assert args.func.__module__ == "contextwarden.cli.tui"


def test_missing_log_is_an_error(tmp_path, capsys):
    assert main(["tui", "--log", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such log" in capsys.readouterr().out


def test_other_commands_do_not_load_textual():
    code = "import sys; from contextwarden.cli import build_parser; build_parser(); print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_help_lists_every_command_without_importing_the_heavy_parts():
    """``contextwarden --help`` imports no command module (COMMANDS names them): not Textual, Chroma,
    onnxruntime, mitmproxy, nor the settings (pydantic)."""
    code = ("import runpy, sys\nsys.argv = ['contextwarden', '--help']\ntry:\n    runpy.run_module('contextwarden', "
            "run_name='__main__')\nexcept SystemExit:\n    pass\nprint(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'textual', 'chromadb', 'onnxruntime', 'mitmproxy', 'pydantic'}), 'contextwarden.settings' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "run " in out.stdout and "tui " in out.stdout and "session " in out.stdout  # every command listed
    assert out.stdout.strip().splitlines()[-1] == "[] False"
