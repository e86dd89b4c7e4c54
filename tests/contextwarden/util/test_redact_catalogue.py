"""Issue 37, finding 2: a catalogue of secret shapes (prose, assignments, split keys, URLs, headers, JSON,
YAML, .env, shell, PEM halves, cloud keys, JWTs, DB URLs, cookies...), each redacted by the one redactor;
and ordinary code and logs that are no secret, left alone (a redaction in code breaks an Edit's source).

The same catalogue goes through a live proxy in ``tests/e2e/test_secrets_live.py``.
"""

from __future__ import annotations

import base64
import random
import secrets as rnd
import string
import uuid
from dataclasses import dataclass

import pytest

from contextwarden.compress.summarise import extractive_summary, transcript_text
from contextwarden.memory.tagger import KeywordTagger
from contextwarden.util.redact import redact_secrets
from contextwarden.util.scrub import scrub
from contextwarden.wire.conversation import Part, Turn


@dataclass(frozen=True)
class Shape:
    name: str
    text: str  # how the secret appears (a message, a tool's output)
    values: tuple[str, ...]  # what must never be found afterwards


def _pick(alphabet: str, n: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def _mix(n: int, extra: str = "") -> str:
    """Letters of both cases and digits (at least one of each), and ``extra`` symbols."""
    while True:
        v = _pick(string.ascii_letters + string.digits + extra, n)
        if any(c.isupper() for c in v) and any(c.islower() for c in v) and any(c.isdigit() for c in v):
            return v


def _hex(n: int) -> str:
    return _pick("0123456789abcdef", n)


def _b64_lines(n_lines: int, width: int = 64) -> list[str]:
    raw = base64.b64encode(rnd.token_bytes(n_lines * width * 3 // 4 + 8)).decode()
    return [raw[i * width:(i + 1) * width] for i in range(n_lines)]


def catalogue() -> list[Shape]:
    """Fresh random values each call. Every shape is a distinct way a secret shows up in a session."""
    out: list[Shape] = []

    def add(name: str, template: str, *values: str) -> None:
        out.append(Shape(name, template.format(*values), values))

    add("prose_wifi_password", "btw the wifi password is {} if you need to test the tablet", _mix(16))
    add("prose_password_for_account", "The password for the staging admin account is {} (rotate it monday)",
        _mix(12, "!#"))
    add("prose_pw_is", "my pw is {}, please don't log it", _mix(11))
    add("prose_api_key_bare", "use api key {} for the geocoder", _mix(32))
    add("prose_token_was", "the deploy token was {} until yesterday", _mix(24))
    add("prose_passphrase", "passphrase for the ssh key is {}", _mix(14, "-_"))
    add("prose_secret_key_colon", "Here is the secret key: {}", _mix(40, "/+"))
    add("prose_quoted_passphrase", 'the backup passphrase is "{}"', " ".join(_pick(string.ascii_lowercase, 7) for _ in range(4)))
    add("prose_changed_to", "I changed my password to {} yesterday", _mix(10, "!?"))
    add("prose_split_first_half", "first half of the api key is {}", _mix(20))
    add("prose_split_second_half", "and the second half of the api key is {}", _mix(20))
    add("env_admin_pw", "ADMIN_PW={}", "hunter2" + _mix(6).lower())
    add("env_db_pass", "$ cat .env\nNODE_ENV=production\nDB_PASS={}\nPORT=8080", _mix(18))
    add("shell_export_pgpassword", "export PGPASSWORD='{}'\npsql -h db -U app", _mix(20))
    add("dotenv_quoted_secret", 'SESSION_SECRET="{}"', _mix(48))
    add("yaml_password", "database:\n  host: db.internal\n  username: app\n  password: {}\n  pool: 5", _mix(22))
    add("yaml_k8s_secret_data", "apiVersion: v1\nkind: Secret\ndata:\n  password: {}\n", base64.b64encode(_mix(18).encode()).decode())
    add("json_password_field", '{{"user": "svc-reports", "password": "{}", "retries": 3}}', _mix(16, "@%"))
    add("json_uppercase_password", '"env": {{"NEO4J_PASSWORD": "{}"}}', _mix(14))
    add("json_gcp_service_account",
        '{{"type": "service_account", "project_id": "acme-prod", "private_key_id": "{}", '
        '"private_key": "-----BEGIN PRIVATE KEY-----\\n{}\\n{}\\n-----END PRIVATE KEY-----\\n"}}',
        _hex(40), *_b64_lines(2))
    add("tfvars_password", 'db_password = "{}"\ninstance_class = "db.t3.micro"', _mix(20))
    add("python_hardcoded_key", 'client = Client(api_key="{}", timeout=30)', _mix(40))
    add("cli_flag_client_secret", "oauth2-proxy --client-id=web --client-secret={} --cookie-secure", _mix(32))
    add("mysql_p_flag", "mysql -h db01 -uroot -p{} shop < dump.sql", _mix(14))
    add("sshpass", "sshpass -p '{}' ssh deploy@10.0.0.7 uptime", _mix(13))
    add("docker_login_p", "docker login -u ci-bot -p {} registry.acme.io", _mix(28))
    add("netrc", "machine api.heroku.com\n  login ops@acme.io\n  password {}", _mix(20))
    add("pypirc", "[pypi]\nusername = __token__\npassword = pypi-{}", _mix(60))
    add("npmrc_auth_token", "//registry.npmjs.org/:_authToken={}", str(uuid.uuid4()))
    add("pem_tail_without_begin", "$ tail -6 id_rsa\n{}\n{}\n{}\n{}\n{}==\n-----END RSA PRIVATE KEY-----",
        *_b64_lines(4), _b64_lines(1, 30)[0])
    add("pem_middle_lines", "lines 10-13 of the key:\n{}\n{}\n{}\n", *_b64_lines(3))
    add("openssh_tail", "{}\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----", *_b64_lines(2, 70), _b64_lines(1, 24)[0])
    add("pem_head_truncated", "-----BEGIN EC PRIVATE KEY-----\n{}\n{}\n[... output truncated]", *_b64_lines(2))
    add("aws_access_key_id", "[default]\naws_access_key_id = AKIA{}\nregion = eu-west-1", _pick(string.ascii_uppercase + string.digits, 16))
    add("aws_secret_access_key", "aws_secret_access_key={}", _mix(40, "/+"))
    add("gcp_api_key", "https://maps.googleapis.com/maps/api/js?key=AIza{}&callback=init", _mix(35, "_-"))
    add("azure_storage_connection", "DefaultEndpointsProtocol=https;AccountName=acmelogs;AccountKey={}==;EndpointSuffix=core.windows.net",
        _mix(86, "+/"))
    add("azure_client_secret", "AZURE_CLIENT_ID=3f1c\nAZURE_CLIENT_SECRET={}", _mix(34, "~."))
    add("digitalocean_token", "doctl auth init -t dop_v1_{}", _hex(64))
    add("alibaba_access_key", "AccessKeyId: LTAI{}", _mix(20))
    add("anthropic_key", "ANTHROPIC_API_KEY=sk-ant-api03-{}AA", _mix(90, "-_"))
    add("openai_project_key", "OpenAI(api_key='sk-proj-{}')", _mix(64))
    add("github_pat_in_remote", "git remote set-url origin https://x-access-token:ghp_{}@github.com/acme/app.git", _mix(36))
    add("slack_webhook", "curl -X POST https://hooks.slack.com/services/T{}/B{}/{} -d '{{}}'", _mix(8).upper(), _mix(10).upper(), _mix(24))
    add("stripe_live_key", "stripe.api_key = 'sk_live_{}'", _mix(24))
    add("huggingface_token", "HF token in the notebook: hf_{}", _mix(34))
    add("jwt_in_prose", "the session cookie was eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{}.{}", _mix(30), _mix(43, "-_"))
    add("postgres_url", "DATABASE_URL=postgres://app:{}@db.internal:5432/app", _mix(18))
    add("mongodb_srv_url", "mongosh 'mongodb+srv://admin:{}@cluster0.x1y2.mongodb.net/prod'", _mix(16))
    add("redis_url_no_user", "REDIS_URL=redis://:{}@cache:6379/0", _mix(24))
    add("jdbc_query_password", "jdbc:postgresql://db:5432/app?user=app&password={}&ssl=true", _mix(16))
    add("odbc_connection_string", "Server=tcp:sql01,1433;Database=crm;User Id=sa;Password={};Encrypt=True", _mix(15, "!$"))
    add("basic_auth_header", "Authorization: Basic {}", base64.b64encode(f"admin:{_mix(14)}".encode()).decode())
    add("bearer_header", "curl -H 'Authorization: Bearer {}' https://api.internal/v2/users", _mix(40, "-._"))
    add("x_api_key_header", "X-Api-Key: {}", _mix(32))
    add("curl_basic_user", "curl -u deploy:{} https://ci.acme.io/job/build", _mix(18))
    add("cookie_header", "Cookie: theme=dark; sessionid={}; csrftoken={}", _mix(32), _mix(32))
    add("set_cookie_header", "HTTP/1.1 302 Found\nSet-Cookie: _app_session={}; path=/; HttpOnly", _mix(64, "%-"))
    add("sentry_dsn", "SENTRY_DSN=https://{}@o4505.ingest.sentry.io/4506", _hex(32))
    add("datadog_api_key", "DD_API_KEY={} DD_SITE=datadoghq.eu", _hex(32))
    add("heroku_api_key_uuid", "heroku config:set HEROKU_API_KEY={}", str(uuid.uuid4()))
    add("vault_token", "VAULT_TOKEN=hvs.{}", _mix(90))
    add("twilio_auth_token_prose", "Twilio auth token is {}", _hex(32))
    return out


CATALOGUE_MIN = 40


def _pieces(value: str, w: int = 12) -> list[str]:
    """Overlapping pieces of a value: a secret cut in two by a redaction or a storage page still shows."""
    return [value[i:i + w] for i in range(0, max(1, len(value) - w + 1), w // 2)]


def leaked(text: str, shape: Shape) -> list[str]:
    return [v for v in shape.values if any(p in text for p in _pieces(v))]


def _around(text: str, shape: Shape, width: int = 300) -> list[str]:
    """The text around each piece of ``shape``'s values still in it."""
    at = [text.find(p) for v in shape.values for p in _pieces(v) if p in text]
    return [text[max(0, i - width):i + width] for i in at[:1]]


def test_the_catalogue_has_at_least_40_distinct_shapes():
    shapes = catalogue()
    assert len(shapes) >= CATALOGUE_MIN
    assert len({s.name for s in shapes}) == len(shapes)
    assert len({s.text.split("{")[0][:20] for s in shapes}) > CATALOGUE_MIN  # not one shape 40 times


@pytest.mark.parametrize("name", [s.name for s in catalogue()])
def test_each_shape_is_redacted(name):
    shape = next(s for s in catalogue() if s.name == name)
    red, n = redact_secrets(shape.text)
    assert n >= 1 and leaked(red, shape) == [], red
    assert redact_secrets(red) == (red, 0)  # idempotent
    # the other ways out: an event's data (scrub), a tag
    assert leaked(str(scrub({"text": shape.text, "headers": [["x-note", shape.text]]})), shape) == []
    assert leaked(" ".join(KeywordTagger(max_tags=12).tag(shape.text)), shape) == []


def test_every_shape_holds_for_many_random_values():
    """The values are random: each shape is redacted whatever its value happens to hold."""
    misses = {}
    for _ in range(300):
        for shape in catalogue():
            red, _ = redact_secrets(shape.text)
            if leaked(red, shape):
                misses[shape.name] = shape.text
    assert misses == {}


def test_every_shape_holds_among_other_lines_and_leaves_them_alone():
    """The shapes mixed at random into a log and into ordinary code (one text, as a tool's output is):
    a secret's context never runs into the next line, and the other lines come back unchanged."""
    logs = [f"2024-05-01T10:00:{i % 60:02d}Z INFO worker {i} processed batch {i * 7} ok" for i in range(300)]
    for seed in range(40):
        rnd = random.Random(seed)
        shapes = catalogue()
        lines = logs + ORDINARY.splitlines()
        rnd.shuffle(lines)
        marked = [f"@@{i}@@" for i in range(len(shapes))]
        for m in marked:
            lines.insert(rnd.randrange(len(lines) + 1), m)
        text = "\n".join(lines)
        for m, shape in zip(marked, shapes):
            text = text.replace(m, shape.text)
        red, _ = redact_secrets(text)
        # (a leak names the seed, the shape as written and what came out around it: values are random)
        assert [(s.name, s.text, _around(red, s)) for s in shapes if leaked(red, s)] == [], seed
        kept = set(red.splitlines())
        assert [ln for ln in logs + ORDINARY.splitlines() if ln not in kept] == [], seed


def test_a_secret_named_by_its_field_in_structured_data():
    """A tool call's input or a body's member: the value alone does not say it is a secret, its name does."""
    value = _mix(12)
    body = {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "db_login", "input": {"host": "db01", "db_password": value}},
        {"type": "thinking", "thinking": "ok", "signature": "Eq" + _mix(60)}]}], "max_tokens": 64}
    out = scrub(body)
    block, thinking = out["messages"][0]["content"]
    assert block["input"] == {"host": "db01", "db_password": "[REDACTED:secret]"}
    assert thinking == body["messages"][0]["content"][1]  # a signature is no credential
    assert body["messages"][0]["content"][0]["input"]["db_password"] == value  # the caller's copy untouched
    assert scrub({"token_type": "Bearer", "password_min_length": 8, "token": "[REDACTED:secret]", "api_key": "${API_KEY}"}) == \
        {"token_type": "Bearer", "password_min_length": 8, "token": "[REDACTED:secret]", "api_key": "${API_KEY}"}


def test_a_compaction_summary_never_holds_a_shape_cut_or_reflowed():
    """A summary quotes requests, commands and error lines cut to a length and reflowed onto one line:
    a key's lines joined by spaces, or one of them alone, no longer look like a key. Each text is
    redacted whole first (the summary is stored with the session, and the LLM summariser's transcript too)."""
    shapes = catalogue()
    turns = []
    for i, shape in enumerate(shapes):
        turns.append(Turn("user", [Part("text", text=f"request {i}: " + shape.text)]))
        turns.append(Turn("assistant", [Part("tool_use", tool="Bash", tool_input={"command": shape.text}, tool_id=f"t{i}")]))
        turns.append(Turn("user", [Part("tool_result", text="Error: " + shape.text + "\n" * 3 + "x" * 300, tool="Bash",
                                        tool_id=f"t{i}", is_error=True)]))
    summary = extractive_summary(turns, messages=len(turns), tokens=100_000, max_chars=200_000)
    transcript = transcript_text(turns, max_chars=10_000_000, result_chars=40)
    assert "request 40:" in summary.text  # the requests are quoted
    assert {s.name for s in shapes if leaked(summary.text, s) or leaked(str(summary.sections), s)} == set()
    assert {s.name for s in shapes if leaked(transcript, s)} == set()


def test_the_issue_examples():
    for text, value in (("the wifi password is TangoPIeJDt5cQ29", "TangoPIeJDt5cQ29"),
                        ("ADMIN_PW=hunter2xyz99", "hunter2xyz99")):
        red, n = redact_secrets(text)
        assert n == 1 and value not in red
        assert value.lower() not in [t.lower() for t in KeywordTagger().tag(text * 3)]
    key_tail = "\n".join(_b64_lines(5)) + "\n-----END PRIVATE KEY-----"
    red, _ = redact_secrets(key_tail)
    assert red == "[REDACTED:private_key]"


# --- what is no secret stays as it is --------------------------------------------------------------------
# Ordinary code and logs, written for this test: names and calls that mention a credential word, hashes,
# ids, numbers, prose about secrets without one. Each line must come back unchanged.
ORDINARY = """\
password_field = form.password
token = tokenizer.next()
def get_secret(self):
TOKEN_RE = re.compile(r"(?P<tok>[A-Za-z_]+)")
api_key = os.environ["OPENAI_API_KEY"]
api_key: str | None = None
self.password = password
secret_key = settings.SECRET_KEY
password = getpass.getpass("Password: ")
if not token: raise AuthError("token is missing")
token_count = len(tokens)
max_tokens: 4096
tokens_per_second = total_tokens / elapsed
auth: required
auth_method: password
password_min_length: 8
key = cache_key(user.id, "profile")
for key, value in sorted(params.items()):
cache key=user:1234:profile hit
the cache key is build_cache_key_v2
commit 3f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39
Merge: 1a2b3c4 5d6e7f8
request_id=550e8400-e29b-41d4-a716-446655440000 status=200
uuid: 123e4567-e89b-12d3-a456-426614174000
sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
integrity sha512-Vq3zTnKQ0o9Lk1dF4qg3r2w
The password is stored in the vault, never in the repo.
Rotate the token every 90 days; the old token stays valid for 1 hour.
the API key is read from ANTHROPIC_API_KEY at start-up
Set the secret in your CI settings (Settings > Secrets > Actions).
pin the version to 1.2.3 in requirements.txt
pin 2 cores to the vm
The API key is required.
The token is valid for 1 hour
your password is too short (min 12 chars)
Your password is "too short"
the password is "not the one you think"
Passwords must contain 1 uppercase letter
password reset token expired after 3600s
tokens: 12.5k in, 3.1k out
the key is 'name'
The secret is in the sauce.
Error: Invalid API key provided: sk-proj-****abcd
The key insight is caching.
--openai-api-key OPENAI_API_KEY
  --api-key PROVIDER=KEY   Set an API key for a provider
password: ${DB_PASSWORD}
token: "{{ .Values.token }}"
AUTH_HEADER_NAME = "Authorization"
headers = {"Authorization": f"Bearer {token}"}
curl -H "Authorization: Bearer $TOKEN" https://api.example.com
export GITHUB_TOKEN=$(gh auth token)
password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
def verify_token(token: str) -> bool:
const passwordInput = document.querySelector("#password");
if (password.length < 12) { return "password too short"; }
jwt.decode(token, key=public_key, algorithms=["RS256"])
secret = secrets.token_hex(32)
tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")
private_key = load_pem_private_key(data, password=None)
keyring.set_password("svc", user, password)
Token usage: input 1532, output 211, cache read 20480
2024-05-01T10:00:00Z INFO auth: login ok user=alice session=7f3e
ERROR invalid token for user 42 (expired 3600s ago)
WARN password reset requested for bob@example.com
key_length = 2048
pass
passed 12 tests in 0.8s
access_key_id: !Ref AccessKeyParam
img = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
"""


def test_ordinary_code_and_logs_are_left_alone():
    lines = ORDINARY.splitlines()
    changed = [(line, redact_secrets(line)[0]) for line in lines if redact_secrets(line)[1]]
    assert changed == []  # (the false-positive count on these lines: pinned at 0)
    whole = "\n".join(lines)
    assert redact_secrets(whole) == (whole, 0)
