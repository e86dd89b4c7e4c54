"""What a new user trips over in the first hour (issue 39), the commands' side: profile errors that say
where and what was meant, stale stage orders, ``--plugins`` on every command that loads stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextwarden.cli import main as cli_main
from contextwarden.offline.replay import replay, request_table, summary_table
from tests.contextwarden.offline.test_replay import SMALLEST, mini_trace

MINE = "from contextwarden import hookimpl\n\n@hookimpl\ndef cw_request(ctx):\n    pass\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _mine(tmp_path: Path) -> Path:
    d = tmp_path / "dropins"
    d.mkdir(exist_ok=True)
    (d / "mine.py").write_text(MINE)
    return d


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    bad = _write(tmp_path, "bad.yaml", "extends: default\ncompaction:\n  soft_threshold: 0.5\n   target: [1\n")
    for cmd in (["config"], ["run", "--dry-run"]):
        assert cli_main([*cmd, "--profile", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{bad}:4:" in err and "invalid YAML" in err, err


def test_typos_get_a_did_you_mean(tmp_path, capsys):
    assert cli_main(["config", "--profile", "claude-cod"]) == 2
    assert "unknown profile 'claude-cod' (did you mean 'claude-code'?)" in capsys.readouterr().err
    typo = _write(tmp_path, "typo.yaml", "extends: default\ncompaction:\n  soft_treshold: 0.5\n")
    assert cli_main(["config", "--profile", str(typo)]) == 2
    assert "compaction.soft_treshold: unknown key (did you mean 'soft_threshold'?)" in capsys.readouterr().err


def test_an_order_that_leaves_out_enabled_built_in_stages_is_warned_about(tmp_path, capsys):
    # the order docs/writing-a-stage.md showed before compression and recall existed
    old = _write(tmp_path, "old.yaml", "extends: default\npipeline:\n"
                                       "  order: [budget, strip, tagging, clearing, compaction, memory]\n")
    assert cli_main(["config", "--profile", str(old)]) == 0
    err = capsys.readouterr().err
    assert "leaves out the built-in stages compression, recall" in err and "after memory" in err, err
    assert cli_main(["run", "--home", str(tmp_path / "h"), "--profile", str(old), "--dry-run"]) == 0
    assert "compression, recall" in capsys.readouterr().err
    off = _write(tmp_path, "off.yaml", "extends: default\npipeline:\n"
                                       "  order: [budget, strip, tagging, clearing, compaction, memory]\n"
                                       "  disabled: [compression, recall, breakpoints]\n")
    assert cli_main(["config", "--profile", str(off)]) == 0
    assert "leaves out" not in capsys.readouterr().err


def test_config_and_replay_load_drop_in_stages_and_config_refuses_unknown_ones(tmp_path, capsys):
    prof = _write(tmp_path, "mine.yaml", "extends: default\npipeline:\n  order: [budget, strip, tagging, clearing, "
                                         "compression, compaction, recall, mine, memory]\n")
    assert cli_main(["config", "--profile", str(prof)]) == 2
    assert "unknown stage 'mine'" in capsys.readouterr().err
    assert cli_main(["config", "--profile", str(prof), "--plugins", str(_mine(tmp_path))]) == 0
    assert "- mine" in capsys.readouterr().out
    trace = mini_trace(tmp_path / "s.jsonl")
    assert cli_main(["replay", str(trace), "--profile", str(prof), "--no-turn-hooks"]) == 2
    assert "unknown stage 'mine'" in capsys.readouterr().err
    assert cli_main(["replay", str(trace), "--profile", str(prof), "--plugins", str(_mine(tmp_path)),
                     "--no-turn-hooks"]) == 0


def test_the_replay_tables_fit_100_columns_and_list_only_applied_decisions():

    rep = replay(SMALLEST, turn_hooks=False, stage_budget_ms=5000)
    lines = (summary_table([rep]) + "\n" + request_table(rep)).splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    rows = {int(line.split()[0]): line.split() for line in lines if line.split()[0].isdigit()}
    # a request that went as the client sent it applied nothing, whatever events its stages emitted
    idle = [r for r in rep.results if r.outcome == "unchanged" and r.stage_events.get("memory")]
    assert idle and all(rows[r.index][-1] == "-" for r in idle)
    assert all(rows[r.index][-1] != "-" for r in rep.results if r.outcome == "rewritten" and r.index in rows)
    assert "tokens orig" in summary_table([rep], wide=True) and "events" in request_table(rep, wide=True)


def test_the_overview_prices_usage_in_dollars_at_list_price():
    from contextwarden.core.liveprotocol import Totals
    from contextwarden.wire.cost import price_for

    t = Totals()
    usage = {"input_tokens": 100_000, "output_tokens": 2_000, "cache_read_input_tokens": 400_000,
             "cache_creation_input_tokens": 10_000}
    t.add({"type": "turn", "data": {"model": "claude-sonnet-4-5", "tokens_in": 600_000, "tokens_sent": 510_000,
                                    "usage": usage}})
    t.add({"type": "turn", "data": {"model": "some-local-model", "usage": usage}})  # no price: not guessed
    p = price_for("claude-sonnet-4-5")
    inp = (100_000 + 1.25 * 10_000 + 0.1 * 400_000) * p.input / 1e6
    assert t.usd == pytest.approx(inp + 2_000 * p.output / 1e6) and t.priced_turns == 1 and t.measured_turns == 2
    assert t.est_saved_usd == pytest.approx(90_000 * inp / 510_000)


def test_the_overview_counts_a_failed_upstream_as_the_row_shows_it():
    from contextwarden.core.liveprotocol import Totals
    from contextwarden.tui.store import Store
    from contextwarden.tui.widgets.request_log import row_cells

    ev = {"seq": 1, "ts": 1.0, "type": "response", "flow_id": "f1", "session": "s",
          "data": {"api": "anthropic", "status": None, "error": "Connection refused", "streamed": False}}
    t, store = Totals(), Store()
    t.add(ev)
    store.apply([{"seq": 0, "ts": 1.0, "type": "request", "flow_id": "f1", "session": "s", "data": {"api": "anthropic"}}, ev])
    assert "error" in str(row_cells(store.requests["f1"])) and t.errors == 1


def test_every_pipeline_order_the_docs_show_keeps_the_built_in_stages():
    from contextwarden.settings.pipeline import PipelineSection

    root = Path(__file__).resolve().parents[3]
    files = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "examples").rglob("*.py")]
    shown = [(f.name, line) for f in files for line in f.read_text().splitlines() if "order: [" in line]
    assert len(shown) >= 3
    for name, line in shown:
        order = [s.strip() for s in line.split("[", 1)[1].split("]")[0].split(",")]
        missing = [s for s in PipelineSection().order if s not in order]
        assert not missing, f"{name}: {line.strip()} leaves out {missing}"


def test_session_actions_take_home_after_the_action_too(tmp_path, capsys):
    for argv in (["session", "list", "--home", str(tmp_path)], ["session", "--home", str(tmp_path), "list"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == f"no proxy is running on {tmp_path} (start one with `contextwarden run`)"
