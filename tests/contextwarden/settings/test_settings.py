"""Profiles: the four shipped ones load, env overrides win, unknown keys are named errors."""

from __future__ import annotations

import sys

import pytest

from contextwarden.cli import main as cli_main
from contextwarden.core.workerpool import process_mode
from contextwarden.request.sessions import derive_session
from contextwarden.settings import SettingsError, available_profiles, load_settings


def test_shipped_profiles_load():
    names = set(available_profiles())
    assert {"observe-only", "claude-code", "openai", "ollama", "default"} <= names
    assert load_settings("observe-only").proxy.observe_only is True
    assert load_settings("openai").tokens.encoding == "o200k_base"
    assert load_settings("ollama").tokens.context_window == 8192
    assert load_settings("default").compaction.soft_threshold == load_settings("claude-code").compaction.soft_threshold


def test_claude_code_is_lean_and_the_conservative_thresholds_are_their_own_profile():
    cc, default = load_settings("claude-code"), load_settings("default")
    assert (cc.clearing.trigger_tokens, cc.clearing.clear_at_least, cc.clearing.keep_recent) == (50_000, 25_000, 6)
    assert (cc.compaction.soft_threshold, cc.compaction.hard_threshold, cc.compaction.target) == (0.35, 0.50, 0.20)
    # tuned on cost and fidelity (docs/REPLAY.md): 6 turns protected, Read results of files being edited kept,
    # the files the kept turns name kept by a compaction, results under 500 tokens never cleared
    assert cc.compaction.protect_recent_turns == 6 and cc.clearing.keep_edited_reads == 20
    assert cc.clearing.working_set_tokens == 12000 and cc.compaction.working_set_tokens == 8000
    assert cc.compaction.working_set_mentions is True and cc.compaction.working_set_written is False
    assert cc.compaction.working_set_latest_edits == 0.5
    assert cc.clearing.min_result_tokens == 500
    assert cc.memory.top_k == 8 and cc.memory.budget_fraction == 0.05 and cc.memory.inject_tool_steps is False
    assert default.clearing == cc.clearing and default.compaction == cc.compaction and default.memory == cc.memory
    cons = load_settings("claude-code-conservative")
    assert cons.name == "claude-code-conservative"
    assert (cons.clearing.trigger_tokens, cons.clearing.clear_at_least, cons.clearing.keep_recent) == (100_000, 20_000, 6)
    assert (cons.compaction.soft_threshold, cons.compaction.hard_threshold, cons.compaction.target) == (0.70, 0.85, 0.40)
    # everything but the thresholds is claude-code's
    assert cons.tokens == cc.tokens and cons.memory == cc.memory and cons.budget == cc.budget
    assert cons.compaction.protect_recent_turns == cc.compaction.protect_recent_turns
    # the old name still loads, as an alias of claude-code
    lean = load_settings("claude-code-lean")
    assert lean.clearing == cc.clearing and lean.compaction == cc.compaction and lean.memory == cc.memory


def test_env_overrides_with_prefix_and_double_underscore(monkeypatch):
    monkeypatch.setenv("CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD", "0.55")
    monkeypatch.setenv("CONTEXTWARDEN_PIPELINE__DISABLED", '["memory"]')
    s = load_settings("claude-code")
    assert s.compaction.soft_threshold == 0.55
    assert s.pipeline.disabled == ["memory"]


@pytest.mark.parametrize("var,named", [
    ("CONTEXTWARDEN_COMPACTION__SOFT_TRESHOLD", "soft_treshold"),
    ("CONTEXTWARDEN_COMPACTOIN__SOFT_THRESHOLD", "compactoin"),
    ("CONTEXTWARDEN_SOMETHING", "CONTEXTWARDEN_SOMETHING"),
])
def test_unknown_env_keys_are_named(monkeypatch, var, named):
    monkeypatch.setenv(var, "1")
    with pytest.raises(SettingsError, match=named):
        load_settings("claude-code")


def test_unknown_yaml_keys_are_named(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: claude-code\nclearing:\n  keep_recnt: 3\nnot_a_section: {}\n")
    with pytest.raises(SettingsError) as e:
        load_settings(p)
    assert "clearing.keep_recnt: unknown key" in str(e.value)
    assert "not_a_section: unknown key" in str(e.value)


def test_extends_and_user_profiles_in_home(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tight.yaml").write_text("extends: ollama\ntokens:\n  context_window: 4096\n")
    s = load_settings("tight", home=tmp_path)
    assert s.name == "tight" and s.tokens.context_window == 4096 and s.compaction.soft_threshold == 0.60


def test_config_command_prints_effective_settings(capsys, monkeypatch):
    monkeypatch.setenv("CONTEXTWARDEN_MEMORY__TOP_K", "3")
    assert cli_main(["config", "--profile", "openai"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 3" in out and "encoding: o200k_base" in out


@pytest.mark.parametrize("headers,body,expect", [
    ({"x-claude-code-session-id": "abc"}, {}, ("abc", "x-claude-code-session-id")),
    ({}, {"metadata": {"user_id": '{"device_id":"d","session_id":"s-json"}'}}, ("s-json", "metadata.user_id")),
    ({}, {"metadata": {"user_id": "user_ab12_account__session_1234abcd-0000"}}, ("1234abcd-0000", "metadata.user_id")),
    ({}, {"prompt_cache_key": "pck"}, ("pck", "prompt_cache_key")),
    ({}, {"user": "u1"}, ("u1", "user")),
])
def test_session_sources(headers, body, expect):
    assert derive_session(headers, body) == expect


def test_session_falls_back_to_a_stable_first_turn_hash():
    a = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}]}
    b = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]}
    sa, src = derive_session({}, a)
    assert src == "first-turn hash" and sa == derive_session({}, b)[0]
    assert sa != derive_session({}, {"messages": [{"role": "user", "content": "other"}]})[0]


def test_persisted_runtime_overrides_survive_a_restart(tmp_path):
    from contextwarden.core.runtime import Runtime

    rt = Runtime.from_profile("claude-code", tmp_path, log=False)
    rt.apply_overrides({"compaction": {"soft_threshold": 0.61}}, persist=True)
    rt.close()
    rt2 = Runtime.from_profile("claude-code", tmp_path, log=False)
    try:
        assert rt2.settings.compaction.soft_threshold == 0.61
    finally:
        rt2.close()


@pytest.mark.parametrize("var,value,named", [
    ("CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD", "abc", "  CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD: Input should be a valid number"),
    ("CONTEXTWARDEN_PIPELINE__BUDGETS_MS", '{"memory": "x"}',
     "  CONTEXTWARDEN_PIPELINE__BUDGETS_MS (pipeline.budgets_ms.memory): Input should be a valid number"),
    ("CONTEXTWARDEN_PIPELINE__DISABLED", "[memory", "  CONTEXTWARDEN_PIPELINE__DISABLED: not valid JSON"),
    ("CONTEXTWARDEN_MEMORY__TOP_K", "3.5", "  CONTEXTWARDEN_MEMORY__TOP_K: Input should be a valid integer"),
])
def test_a_bad_value_from_the_environment_is_blamed_on_the_variable(monkeypatch, var, value, named):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as e:
        load_settings("claude-code")
    msg = str(e.value)
    assert msg.startswith("invalid settings in the environment:\n") and named in msg
    assert "claude-code.yaml" not in msg  # the profile file is fine


def test_file_and_environment_errors_are_each_blamed_on_their_source(monkeypatch, tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: claude-code\nclearing:\n  keep_recent: many\n")
    monkeypatch.setenv("CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD", "abc")
    with pytest.raises(SettingsError) as e:
        load_settings(p)
    assert str(e.value).splitlines() == [
        "invalid settings in the environment:",
        "  CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD: Input should be a valid number, unable to parse string as a number",
        f"invalid settings in {p}:",
        "  clearing.keep_recent: Input should be a valid integer, unable to parse string as an integer"]
    # the same bad value in the file, with a good one in the environment: the environment wins, no error
    monkeypatch.setenv("CONTEXTWARDEN_CLEARING__KEEP_RECENT", "4")
    monkeypatch.delenv("CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD")
    assert load_settings(p).clearing.keep_recent == 4


def test_the_script_names_the_variable(monkeypatch, tmp_path):
    from contextwarden.core.runtime import Runtime

    monkeypatch.setenv("CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD", "abc")
    with pytest.raises(SettingsError, match="environment:\n  CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD: "):
        Runtime.from_profile("claude-code", tmp_path / "home")
    assert cli_main(["run", "--dry-run", "--home", str(tmp_path / "home")]) == 2


def test_the_cli_credential_variable_is_not_a_setting(monkeypatch):
    # CONTEXTWARDEN_CREDENTIAL is what `search`, `recall`, `memory` and `session` send as the caller's
    # credential; `search` without a proxy loads the profile with it set
    monkeypatch.setenv("CONTEXTWARDEN_CREDENTIAL", "sk-ant-test-0000")
    assert load_settings("claude-code").name == "claude-code"


def test_auto_process_is_inline_unless_the_proxy_section_or_a_mitmdump_process_says_separate(monkeypatch):
    assert process_mode("auto", load_settings(environ={})) == "inline"
    proxy = load_settings(environ={"CONTEXTWARDEN_PROXY__AUTO_PROCESS": "separate"})  # contextwarden run, the engine
    assert process_mode("auto", proxy) == "separate" and process_mode("inline", proxy) == "inline"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mitmdump"])
    assert process_mode("auto", load_settings(environ={})) == "separate"
