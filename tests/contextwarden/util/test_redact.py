"""Secrets planted in a conversation never reach the memory store (its files on disk, or an export)."""

from __future__ import annotations

import secrets as rnd
import string

import pytest

from contextwarden.core.events import EventBus
from contextwarden.memory.ingest import Ingestor, items_from_messages
from contextwarden.models import ApiKind
from contextwarden.util.redact import redact_secrets
from tests.support.memstore import events, store


def _alnum(n: int) -> str:
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


def _upper(n: int) -> str:
    return "".join(rnd.choice(string.ascii_uppercase + string.digits) for _ in range(n))


def planted() -> dict[str, tuple[str, str]]:
    """kind -> (secret, the text it appears in). Fresh random values each run."""
    s = {
        "anthropic": "sk-ant-api03-" + _alnum(80) + "-" + _alnum(12) + "AA",
        "openai_project": "sk-proj-" + _alnum(60),
        "openai_classic": "sk-" + _alnum(48),
        "aws_access_key": "AKIA" + _upper(16),
        "aws_secret": _alnum(20) + "/" + _alnum(19),
        "github_classic": "ghp_" + _alnum(36),
        "github_oauth": "gho_" + _alnum(36),
        "github_fine_grained": "github_pat_" + _alnum(22) + "_" + _alnum(59),
        "gitlab": "glpat-" + _alnum(20),
        "slack_bot": "xoxb-" + "".join(rnd.choice(string.digits) for _ in range(12)) + "-" + _alnum(24),
        "slack_user": "xoxp-" + "".join(rnd.choice(string.digits) for _ in range(12)) + "-" + _alnum(24),
        "google": "AIza" + _alnum(35),
        "stripe": "sk_live_" + _alnum(24),
        "huggingface": "hf_" + _alnum(34),
        "bearer": _alnum(40),
        "basic_auth": _alnum(24) + "==",
        "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOi" + _alnum(30) + "." + _alnum(43),
        "pem_rsa": _alnum(64),
        "pem_openssh": _alnum(64),
        "url_password": "Pg-" + _alnum(16),
        "env_password": "pw-" + _alnum(18),
        "env_token": _alnum(32),
        "env_secret": _alnum(28),
        "npmrc": "8f14e45f-" + _alnum(8) + "-" + _alnum(12),
        "json_client_secret": _alnum(30),
        "yaml_password": "correct-horse-" + _alnum(10),
        "cli_flag": _alnum(20),
        "curl_user": "cu-" + _alnum(16),
    }
    return {
        "anthropic": (s["anthropic"], f"export ANTHROPIC_API_KEY={s['anthropic']}"),
        "openai_project": (s["openai_project"], f"I set the key to {s['openai_project']} but it still fails"),
        "openai_classic": (s["openai_classic"], f"client = OpenAI(api_key=\"{s['openai_classic']}\")"),
        "aws_access_key": (s["aws_access_key"], f"[default]\naws_access_key_id = {s['aws_access_key']}"),
        "aws_secret": (s["aws_secret"], f"aws_secret_access_key = {s['aws_secret']}"),
        "github_classic": (s["github_classic"], f"git clone https://{s['github_classic']}@github.com/acme/app"),
        "github_oauth": (s["github_oauth"], f"gh auth status\n  Token: {s['github_oauth']}"),
        "github_fine_grained": (s["github_fine_grained"], f"use {s['github_fine_grained']} for the CI"),
        "gitlab": (s["gitlab"], f"GITLAB token is {s['gitlab']}"),
        "slack_bot": (s["slack_bot"], f"SLACK_BOT={s['slack_bot']}"),
        "slack_user": (s["slack_user"], f"the user token {s['slack_user']} expired"),
        "google": (s["google"], f"https://maps.googleapis.com/maps/api/geocode/json?key={s['google']}"),
        "stripe": (s["stripe"], f"stripe.api_key = '{s['stripe']}'"),
        "huggingface": (s["huggingface"], f"huggingface-cli login --token {s['huggingface']}"),
        "bearer": (s["bearer"], f"curl -H 'Authorization: Bearer {s['bearer']}' https://api.internal/v1"),
        "basic_auth": (s["basic_auth"], f"Authorization: Basic {s['basic_auth']}"),
        "jwt": (s["jwt"], f"the session cookie was {s['jwt']}"),
        "pem_rsa": (s["pem_rsa"], "-----BEGIN RSA PRIVATE KEY-----\n" + s["pem_rsa"] + "\n" + _alnum(64)
                    + "\n-----END RSA PRIVATE KEY-----"),
        "pem_openssh": (s["pem_openssh"], "cat ~/.ssh/id_ed25519\n-----BEGIN OPENSSH PRIVATE KEY-----\n"
                        + s["pem_openssh"] + "\n[output truncated]"),
        "url_password": (s["url_password"], f"DATABASE_URL=postgres://admin:{s['url_password']}@db.internal:5432/app"),
        "env_password": (s["env_password"], f"$ env\nHOME=/root\nDB_PASSWORD={s['env_password']}\nPATH=/usr/bin"),
        "env_token": (s["env_token"], f"MY_SERVICE_TOKEN=\"{s['env_token']}\""),
        "env_secret": (s["env_secret"], f"export JWT_SECRET='{s['env_secret']}'"),
        "npmrc": (s["npmrc"], f"$ cat ~/.npmrc\n//registry.npmjs.org/:_authToken={s['npmrc']}\nalways-auth=true"),
        "json_client_secret": (s["json_client_secret"], f'{{"client_id": "abc", "client_secret": "{s["json_client_secret"]}"}}'),
        "yaml_password": (s["yaml_password"], f"database:\n  user: app\n  password: {s['yaml_password']}"),
        "cli_flag": (s["cli_flag"], f"mysql -h db --password={s['cli_flag']} app"),
        "curl_user": (s["curl_user"], f"curl -u deploy:{s['curl_user']} https://ci.internal/job"),
    }


def _windows(secret: str, w: int = 12) -> list[str]:
    """Overlapping pieces: a stored secret split across two database pages is still found."""
    return [secret[i:i + w] for i in range(0, max(1, len(secret) - w + 1), w // 2)]


def _leaks(blob: bytes, plants: dict[str, tuple[str, str]]) -> list[str]:
    return [k for k, (sec, _) in plants.items() if any(p.encode() in blob for p in _windows(sec))]


@pytest.mark.parametrize("kind", sorted(planted()))
def test_each_kind_is_redacted(kind):
    secret, text = planted()[kind]
    red, n = redact_secrets(text)
    assert n >= 1 and "[REDACTED:" in red
    assert not any(p in red for p in _windows(secret)), red
    assert redact_secrets(red) == (red, 0)  # idempotent: stored text is not redacted again


def test_ordinary_text_is_left_alone():
    text = ("max_tokens: 4096\nauthor: Jane Doe\nauth: required\ntoken_count = 12\npassword_min_length: 8\n"
            "See https://docs.python.org/3/library/re.html\nsk-learn is a typo\nbasic configuration works\n"
            "PATH=/usr/local/bin:/usr/bin\napi_key = os.environ['OPENAI_API_KEY']\npassword: ${DB_PASSWORD}\n"
            "The key insight is caching.\n")
    assert redact_secrets(text) == (text, 0)


def test_planted_secrets_never_reach_chroma_or_an_export(cw_home, tmp_path):
    plants = planted()
    canary = "canary-" + _alnum(20)  # ordinary text: the scan must find it, or it proves nothing
    texts = [t for _, t in plants.values()]
    env_dump = "$ cat .env\n" + "\n".join(t for t in texts) + "\n" + "\n".join(f"LINE_{i}=value {i}" for i in range(120))
    msgs = [
        {"role": "user", "content": f"{canary}: here is my setup\n" + texts[0]},
        {"role": "assistant", "content": [{"type": "text", "text": texts[1]},
                                          {"type": "tool_use", "id": "tu_1", "name": "Bash", "input": {"command": texts[2]}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": env_dump}]},
    ] + [{"role": "user" if i % 2 else "assistant", "content": t} for i, t in enumerate(texts[3:])]
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus, chunk_tokens=200)
    assert ing.submit(items_from_messages(msgs, ApiKind.ANTHROPIC, "sess-secret", "t-a", 0))
    assert ing.flush(300)
    ev = events(bus, "memory")[-1]
    assert ev["new"] > len(texts) and ev["chunks"] > 1 and ev["redacted"] >= 2 * len(plants)
    ing.close()
    export = tmp_path / "export.jsonl"
    s.export_jsonl(export)
    s.close()

    blob = b"".join(p.read_bytes() for p in (cw_home / "chroma").rglob("*") if p.is_file())
    assert canary.encode() in blob
    assert _leaks(blob, plants) == []
    exported = export.read_bytes()
    assert canary.encode() in exported and b"[REDACTED:" in exported
    assert _leaks(exported, plants) == []
    assert _leaks(b"".join(e.to_json() for e in bus.recent), plants) == []


def test_keys_are_found_in_any_case_whether_or_not_lowering_the_text_moves_its_characters():
    """The words a secret's key holds are looked for on the text lower-cased (the fast way) unless
    lowering lengthens it ("İ" becomes two characters): then on the text itself. Both find the same."""
    from contextwarden.util import redact as secrets

    value = _alnum(24)
    pairs = [f"API_KEY={value}", f"Api_Key: '{value}'", f"PASSWORD = \"{value}\"", f"client_Secret => {value}",
             f"x-Auth-Token: {value}", f"DB_DSN={value}", f"{{\"sessionKey\": \"{value}\"}}"]
    code = "def load(path):\n    return json.load(open(path))  # the key of the cache\n" * 20
    for pair in pairs:
        for before in ("", "Kelvin K and ſ, ", "naïve café "):
            plain = code + before + pair + "\n" + code
            moved = "İstanbul " + plain  # lower() lengthens it: the hints are found on the text itself
            assert len(moved.lower()) != len(moved)
            for text in (plain, moved):
                red, n = redact_secrets(text)
                assert value not in red and n >= 1, (pair, before, text[:12])
            assert redact_secrets(moved)[0] == "İstanbul " + redact_secrets(plain)[0]
            assert [m.start() for m in secrets._hints(plain)] == [m.start() for m in secrets._HINT_LOWER.finditer(plain.lower())]
