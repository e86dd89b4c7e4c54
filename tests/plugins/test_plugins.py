"""Plugin loading (entry points, drop-in folder), ordering, the trace switch, and every hook."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
from mitmproxy.test import tutils

from contextwarden.cli import main as cli_main
from contextwarden.core.pluginmanager import describe, enable_trace, make_plugin_manager, stage_order
from tests.addons.test_interceptor import (  # noqa: F401  (harness_factory fixture below)
    anthropic_flow,
    body,
    harness_factory,  # noqa: F401
    only,
)
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins" / "tool_output_cap.py"
BUILTINS = ["budget", "strip", "tagging", "clearing", "compaction", "memory"]


def test_builtins_come_from_the_same_entry_point_group_as_third_party_plugins():
    pm = make_plugin_manager(None)
    names = {n for n, _ in pm.list_name_plugin()}
    assert set(BUILTINS) <= names
    for n in BUILTINS:
        assert pm.cw_sources[n].startswith(f"entry point contextwarden.plugins.{n}")


def test_dropin_folder_order_and_disable(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    shutil.copy(EXAMPLE, d / "tool_output_cap.py")
    (d / "second.py").write_text("from contextwarden import hookimpl\n\n@hookimpl\ndef cw_request(ctx):\n    pass\n")
    (d / "broken.py").write_text("raise ImportError('nope')\n")
    pm = make_plugin_manager(d, entry_points=False)
    assert pm.cw_sources["tool_output_cap"] == str(d / "tool_output_cap.py")
    assert "broken" in pm.cw_errors  # reported, not fatal
    assert [n for n, _ in stage_order(pm, ["second", "tool_output_cap"], [])] == ["second", "tool_output_cap"]
    assert [n for n, _ in stage_order(pm, [], ["second"])] == ["tool_output_cap"]
    info = {i.name: i for i in describe(pm, ["second"])}
    assert info["tool_output_cap"].hooks == ["cw_configure", "cw_request", "cw_response_event", "cw_shutdown", "cw_turn_complete"]


def test_trace_switch_prints_hook_calls(tmp_path):
    lines: list[str] = []
    pm = make_plugin_manager(None, entry_points=False, extra=[("ex", __import__("contextwarden.hookspecs"))])
    enable_trace(pm, write=lines.append)
    pm.hook.cw_shutdown(runtime=None)
    assert any("cw_shutdown" in line for line in lines)


def test_env_trace_switch(monkeypatch):
    monkeypatch.setenv("CONTEXTWARDEN_TRACE", "1")
    pm = make_plugin_manager(None, entry_points=False)
    assert getattr(pm, "cw_trace", None) is not None


def test_plugins_command_lists_stages_in_order(capsys, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    shutil.copy(EXAMPLE, d / "tool_output_cap.py")
    rc = cli_main(["plugins", "--plugins", str(d)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tool_output_cap" in out and str(d / "tool_output_cap.py") in out
    listed = [line.split()[1] for line in out.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    builtins_listed = [n for n in listed if n in BUILTINS]
    assert builtins_listed == [n for n in BUILTINS if n in builtins_listed]  # the profile's order
    assert listed[-1] == "tool_output_cap"  # unlisted stages run after the listed ones


SSE = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message","role":"assistant",'
       b'"model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":12,"cache_read_input_tokens":100,'
       b'"cache_creation_input_tokens":0,"output_tokens":1}}}\n\n'
       b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
       b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \xc3\xa9"}}\n\n'
       b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
       b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\n'
       b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


async def test_every_hook_of_the_example_plugin_runs_in_the_proxy(harness_factory, tmp_path):
    """cw_configure, cw_request, cw_response_event, cw_turn_complete and cw_shutdown, through the real script."""
    h = harness_factory(plugins={"tool_output_cap": EXAMPLE.read_text()},
                        profile_yaml=only("tool_output_cap") + "plugins:\n  tool_output_cap:\n    max_chars: 10\n")
    mod = h.runtime.pm.get_plugin("tool_output_cap")
    assert mod.MAX_CHARS == 10  # cw_configure read the profile
    msgs = [{"role": "user", "content": "run it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x" * 50}]}]
    f = await h.send(anthropic_flow(body(msgs, stream=True)))
    sent = orjson.loads(f.request.content)
    assert sent["messages"][2]["content"][0]["content"].startswith("x" * 10 + "\n[... 40 characters cut")  # cw_request

    f.response = tutils.tresp(status_code=200, content=b"", headers=__import__("mitmproxy").http.Headers(
        [(b"content-type", b"text/event-stream")]))
    h.observer.responseheaders(f)
    received = b""
    for i in range(0, len(SSE), 7):  # chunk boundaries fall everywhere, even inside the UTF-8 'é'
        received += f.response.stream(SSE[i:i + 7])
    received += f.response.stream(b"")
    assert received == SSE  # the client gets the bytes unchanged
    await h.observer.response(f)
    assert mod.streamed_events == 6  # cw_response_event, once per SSE event
    h.runtime.turn_pool.submit(lambda: None).result(timeout=10)
    turn_ev = wait_until(lambda: h.events("tool_output_cap_turn"), 2.5)
    assert turn_ev and turn_ev[-1].data["input"] == 112  # cw_turn_complete: usage with cache reads
    resp = h.events("response")[-1].data
    assert resp["status"] == 200 and resp["usage"]["cache_read_input_tokens"] == 100
    bus = h.runtime.bus
    h.warden.done()  # cw_shutdown
    assert any(e.type == "tool_output_cap_shutdown" for e in bus.recent)


# --- an unknown stage name is a settings error that names it --------------------------------------------
TYPO_PROFILE = "extends: claude-code\npipeline:\n  order: [budget, strip, taging, clearing, compaction, memory, mine]\n  disabled: [memroy]\n"
MINE = "from contextwarden import hookimpl\n\n@hookimpl\ndef cw_request(ctx):\n    pass\n"


def _typo_profile(tmp_path) -> Path:
    p = tmp_path / "typo.yaml"
    p.write_text(TYPO_PROFILE)
    return p


def _mine(tmp_path) -> Path:
    d = tmp_path / "dropins"
    d.mkdir(exist_ok=True)
    (d / "mine.py").write_text(MINE)
    return d


def test_run_refuses_an_unknown_stage_name_and_names_it(capsys, tmp_path):
    profile = _typo_profile(tmp_path)
    home = ["--home", str(tmp_path / "home")]
    assert cli_main(["run", *home, "--profile", str(profile), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.order: unknown stage 'taging'" in err
    assert "pipeline.disabled: unknown stage 'memroy'" in err
    assert "unknown stage 'mine'" in err  # not loaded without --plugins
    assert "known stages: breakpoints, budget, clearing, compaction, compression, memory, recall, strip, tagging" in err
    # with the drop-in folder, 'mine' is a stage like the built-ins: only the typos are left
    assert cli_main(["run", *home, "--profile", str(profile), "--plugins", str(_mine(tmp_path)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'taging'" in err and "'memroy'" in err and "'mine'" not in err
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(TYPO_PROFILE.replace("taging", "tagging").replace("memroy", "memory"))
    assert cli_main(["run", *home, "--profile", str(fixed), "--plugins", str(_mine(tmp_path)), "--dry-run"]) == 0
    assert "mitmdump -s" in capsys.readouterr().out


def test_script_refuses_an_unknown_stage_name(harness_factory, tmp_path):
    import pytest
    from mitmproxy import exceptions

    with pytest.raises(exceptions.OptionsError, match=r"pipeline.order: unknown stage 'taging'"):
        harness_factory(profile=str(_typo_profile(tmp_path)))
    h = harness_factory(plugins={"mine": MINE},
                        profile_yaml=TYPO_PROFILE.replace("taging", "tagging").replace("memroy", "memory"))
    stages = [n for n, _ in h.runtime.stages()]
    assert stages[:6] == ["budget", "strip", "tagging", "clearing", "compaction", "mine"]
    assert sorted(stages[6:]) == ["breakpoints", "compression", "recall"]  # not listed: after, in load order


def test_mitmdump_exits_with_the_unknown_stage_named(tmp_path):
    import pytest

    from tests.support.proxy import ProxyProcess, ProxyStartError

    p = ProxyProcess(tmp_path / "proxy", profile=_typo_profile(tmp_path))  # (beside two loops 60 s passed in silence)
    with pytest.raises(ProxyStartError) as e:
        p.start()
    assert p.proc.returncode != 0
    assert "pipeline.order: unknown stage 'taging'" in str(e.value)
    assert "pipeline.disabled: unknown stage 'memroy'" in str(e.value)


def test_settings_changed_at_run_time_cannot_name_an_unknown_stage(tmp_path):
    import pytest

    from contextwarden.core.runtime import Runtime
    from contextwarden.settings import SettingsError

    rt = Runtime.from_profile("claude-code", tmp_path / "home")
    try:
        before = rt.settings
        with pytest.raises(SettingsError, match="pipeline.disabled: unknown stage 'memroy'"):
            rt.apply_overrides({"pipeline": {"disabled": ["memroy"]}})
        assert rt.settings is before
        rt.apply_overrides({"pipeline": {"disabled": ["memory"]}})
        assert "memory" not in [n for n, _ in rt.stages()]
    finally:
        rt.close()
