"""Keep credentials out of everything contextwarden writes or shows, and derive the tenant a request
belongs to. The one redactor: every secret, in a text, a structured field, a header or a query string,
becomes ``[REDACTED:<kind>]`` (a header's whole value: ``[REDACTED:header]``); the surrounding text stays.
Redaction is idempotent.

Secrets are found by shape (a key's format, a PEM block or its halves) and by meaning: a credential word
followed by a value, in an assignment (``ADMIN_PW=...``) or in prose ("the wifi password is ..."). It
errs on the side of redacting a secret, but not code: a value that is a call, a dotted or snake_case
name, a name in capitals, a path or a regex is left alone (redacting code breaks an Edit of that source).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .lru import memoized


def _mark(kind: str) -> str:
    return f"[REDACTED:{kind}]"


REDACTED = _mark("header")  # a header's value, whole


_AWS = ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA", "AROA")

# --- whole-token formats: (kind, pattern, literals); the whole match is the secret -----------------------
# ``literals``: strings of which every match holds at least one: a pattern runs only on a text that holds
# one of them (a substring search, ~100x cheaper than a regex pass).
_TOKENS: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [(k, re.compile(p), lits) for k, p, lits in [
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}", ("sk-ant-",)),
    ("openai_key", r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{16,}", ("sk-",)),
    ("api_key", r"\bsk-[A-Za-z0-9_\-]{20,}", ("sk-",)),  # OpenAI classic and the many look-alikes (DeepSeek, ...)
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z0-9]{16}\b", _AWS),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{30,}", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("github_token", r"\bgithub_pat_[A-Za-z0-9_]{20,}", ("github_pat_",)),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_\-]{20,}", ("glpat-",)),
    ("slack_token", r"\bxox[abposrce]-[A-Za-z0-9\-]{10,}", ("xox",)),
    ("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+", ("https://hooks.slack.com/services/",)),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", ("AIza",)),
    ("google_oauth", r"\bya29\.[0-9A-Za-z_\-]{20,}", ("ya29.",)),
    ("google_client_secret", r"\bGOCSPX-[0-9A-Za-z_\-]{20,}", ("GOCSPX-",)),
    ("stripe_key", r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}", ("_live_", "_test_")),
    ("stripe_webhook", r"\bwhsec_[0-9A-Za-z]{20,}", ("whsec_",)),
    ("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}", ("hf_",)),
    ("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b", ("npm_",)),
    ("pypi_token", r"\bpypi-[A-Za-z0-9_\-]{50,}", ("pypi-",)),
    ("sendgrid_key", r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}", ("SG.",)),
    ("digitalocean_token", r"\bdo[opr]_v1_[a-f0-9]{64}\b", ("doo_v1_", "dop_v1_", "dor_v1_")),
    ("shopify_token", r"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b", ("shpat_", "shpss_", "shpca_", "shppa_")),
    ("twilio_key", r"\bSK[0-9a-f]{32}\b", ("SK",)),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", ("eyJ",)),
    ("groq_key", r"\bgsk_[A-Za-z0-9]{40,}", ("gsk_",)),
    ("replicate_token", r"\br8_[A-Za-z0-9]{30,}", ("r8_",)),
    ("databricks_token", r"\bdapi[a-f0-9]{32}\b", ("dapi",)),
    ("vault_token", r"\bhv[sbr]\.[A-Za-z0-9_\-]{24,}", ("hvs.", "hvb.", "hvr.")),
    ("mailgun_key", r"\bkey-[0-9a-zA-Z]{32}\b", ("key-",)),
    ("alibaba_key", r"\bLTAI[A-Za-z0-9]{12,20}\b", ("LTAI",)),
    ("notion_token", r"\b(?:ntn_|secret_)[A-Za-z0-9]{40,}", ("ntn_", "secret_")),
    ("linear_key", r"\blin_api_[A-Za-z0-9]{32,}", ("lin_api_",)),
    ("newrelic_key", r"\bNRAK-[A-Z0-9]{27}\b", ("NRAK-",)),
    ("postman_key", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", ("PMAK-",)),
]]

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY((?: BLOCK)?)-----.*?-----END \1PRIVATE KEY\2-----", re.S)
# a key cut off by truncated output: the BEGIN line and the base64 that follows (real or escaped newlines)
_PEM_OPEN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
                       r"(?:(?:\\n|\r?\n){1,2}(?:[|>] ?)?(?:[A-Za-z0-9+/=]{4,}|[A-Za-z\-]+: [^\n\\]*))*")
# (a line may be quoted: "| " is how a memory block quotes recalled text, "> " how mail and markdown do)
# the other half: base64 lines up to the END line, without their BEGIN line (``tail -6 key``)
_NL = r"(?:\r?\n|\\r?\\n)"  # a line break, real or escaped (a JSON dump in a tool result)
# a line of a key starts a line (or a quoted string: a JSON dump), or is long (the first one may follow a
# prompt, "Error: ..."): a word at the end of the line before is no part of it
_LINE_START = r"(?:(?m:^)|(?<=\\n)|(?<=[\"']))[ \t]*"
# (full lines, then the last one, which may be short: a word on the line before is no part of it)
_PEM_TAIL = re.compile(r"(?:(?:" + _LINE_START + r"(?:[|>] ?)?[A-Za-z0-9+/=]{16,80}|(?<![A-Za-z0-9+/=])(?![0-9a-fA-F]{40,80}"
                       + _NL + r")[A-Za-z0-9+/=]{40,80})" + _NL + r")*"  # (a hash before it is no part of it)
                       r"(?:" + _LINE_START + r"(?:[|>] ?)?[A-Za-z0-9+/=]{1,15}" + _NL + r")?"
                       r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# a key's middle, alone (a key pasted in pieces): two or more lines of 64 (PEM) or 70 (OpenSSH) base64
# characters. A certificate's body has the same shape and is public, but is redacted too (nothing edits
# it); hex lines (hashes) have no upper case and are left alone (_pem_run)
_PEM_RUN = re.compile(r"(?<![A-Za-z0-9+/=])(?:(?:[A-Za-z0-9+/]{64}|[A-Za-z0-9+/]{70})" + _NL + r"){2,}"
                      r"(?:[A-Za-z0-9+/]{1,70}={0,2}(?![A-Za-z0-9+/=]))?")
# (found first by the second line's start: a search for a line break, ~10x cheaper than the run's pattern)
_PEM_RUN_HINT = re.compile(r"\n[A-Za-z0-9+/]{60}")
_PEM_RUN_HINT_ESCAPED = re.compile(r"\\n[A-Za-z0-9+/]{60}")

# --- secrets inside a known context: the group "s" is the secret ------------------------------------------
# (``literals`` as for _TOKENS, searched in the lower-cased text)
_CONTEXT: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [(k, re.compile(p), lits) for k, p, lits in [
    # scheme://user:password@host (keeps the user name)
    ("url_password", r"(?i)\b[a-z][a-z0-9+.\-]*://[^/\s:@\"'<>\[\]]*:(?P<s>[^/\s@\"'<>\[]+)@", ("://",)),
    ("authorization", r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:basic|digest|token|apikey|key)\s+(?P<s>[^\s\"'\[]+)",
     ("authorization",)),
    ("bearer_token", r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9\-._~+/]{12,}=*)", ("bearer",)),
    ("basic_auth", r"(?:^|\s)(?:-u|--user)\s+[\"']?[^\s:\"']+:(?P<s>[^\s\"'\[]+)", ("-u",)),
    ("password", r"(?i)\b(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n]*?\s-p(?P<s>[^\s\"'\[]{3,})", ("mysql", "mariadb")),
    ("password", r"(?i)\b(?:sshpass|(?:docker|podman|helm|nerdctl) (?:registry )?login)\b[^\n]*?\s-p\s+[\"']?(?P<s>[^\s\"'\[]{3,})",
     ("sshpass", " login")),
    ("dsn_key", r"(?i)\bhttps?://(?P<s>[0-9a-f]{32})@", ("://",)),
]]

# credentials in a URL's query string or fragment: ?api_key=..., &token=..., #access_token=..., &sig=...
_URL_QUERY = re.compile(r"(?P<lead>[?&#;])(?P<key>[A-Za-z_][\w.\-]{0,60})=(?P<s>[^&#\s\"'<>\[\]]+)")
_URL_KEY_WORDS = {"key", "apikey", "token", "secret", "sig", "signature", "password", "passwd", "pwd", "auth",
                  "credential", "credentials", "code", "jwt", "bearer", "session", "ticket", "hmac", "assertion"}

# key <sep> value: env dumps, .env, YAML, JSON, .npmrc, headers, CLI flags
_ASSIGN = re.compile(
    r"""(?<![\w.\-])(?P<flag>--)?["']?(?P<key>[A-Za-z_][\w.\-]{0,80}+)["']?"""
    r"""(?P<sep>\s*+(?:=>|=|:)\s*+|(?(flag)[ \t]+|(?!)))"""
    r"""(?:"(?P<v1>[^"\n]*)"|'(?P<v2>[^'\n]*)'|(?P<v3>[^\s"',;}\]\[)]+))""")

_ESCAPED_END = re.compile(r"(?:\\[nrt])+$")
_KEY, _V1, _V2, _V3 = (_ASSIGN.groupindex[n] for n in ("key", "v1", "v2", "v3"))
assert _V1 < _V2 < _V3 == _ASSIGN.groups  # (the values are the last groups: m.lastindex names the one matched)

_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "pwd", "pw", "passphrase", "pass", "passcode", "token",
                 "apikey", "credential", "credentials", "authtoken", "auth", "authorization", "cookie", "privatekey",
                 "accesskey", "secretkey", "sessionkey", "signature", "sig", "dsn", "connectionstring", "sessionid"}
_KEY_PREFIXES = {"api", "access", "account", "secret", "private", "shared", "master", "signing", "encryption",
                 "client", "subscription", "session", "auth", "license", "app", "webhook", "service", "admin"}
_PASSWORD_WORDS = {"password", "passwd", "pwd", "pw", "passphrase", "pass", "passcode", "secret", "secrets"}
# one word ending in one of these holds a secret too: PGPASSWORD, csrftoken, xsrftoken, clientsecret
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "apikey")
_CODE_PREFIXES = ("os.", "self.", "this.", "process.", "config.", "settings.", "env.", "ENV[", "getenv", "secrets.",
                  "args.", "options.", "opts.", "params.", "request.", "req.", "ctx.")
_PLACEHOLDERS = {"", "null", "none", "nil", "true", "false", "undefined", "required", "optional", "string",
                 "str", "bool", "int", "redacted", "changeme", "xxx", "***", "..."}
# an unquoted value that is code, not a secret: a call or subscript, a dotted name (form.password), a
# snake_case name (token_value), a regex class (\s*); and, quoted or not, a name in capitals (a flag's
# OPENAI_API_KEY metavar, a REDACTED_TOKEN placeholder) or a value that starts a pair of its own
# (PROVIDER=...). Only without a digit: a secret has one (almost always), code names seldom do.
_CODE_VALUE = re.compile(r"[^(\[]*[(\[].*|[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+|\\[sSdDwWbB].*|\w*_\w*")
# a name made of words (password, passwordInput, X-Contextwarden-Token, proxy-credential), not letters at random
_IDENT = re.compile(r"_?(?:[A-Z]+|[A-Z]?[a-z]+(?:[A-Z][a-z]+)*)(?:[_\-](?:[A-Z]+|[A-Z]?[a-z]+(?:[A-Z][a-z]+)*))*")
_NAME_VALUE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z][A-Z0-9_]*=.*")


_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")


def _words(key: str) -> list[str]:
    key = _CAMEL.sub(r"\1_\2", key)
    return [w for w in _NON_WORD.split(key.lower()) if w]


@memoized(4096)
def _secret_key(key: str) -> str | None:
    """``"password"`` / ``"token"`` if a variable named ``key`` holds a secret, else None. (Memoised: a
    pure function of a short name, and source code and env dumps repeat the same names over and over.)"""
    w = _words(key)
    if not w:
        return None
    if any(x in _PASSWORD_WORDS or x.endswith(("password", "passwd")) for x in w):
        return "password"
    if any(x in _SECRET_WORDS or x.endswith(_SECRET_SUFFIXES) for x in w):
        return "token"
    for a, b in zip(w, w[1:]):
        if b == "key" and a in _KEY_PREFIXES:
            return "token"
    return None


def _secret_value(value: str, kind: str) -> bool:
    v = value.strip().strip("`")  # (markdown's code quotes)
    if v.startswith("--"):  # a flag's name
        return False
    if v.lower() in _PLACEHOLDERS or v.startswith(("[REDACTED", "${", "$(", "<", "{{", "%(", "process.env")):
        return False
    if v.startswith("$") and re.fullmatch(r"\$\{?[A-Za-z_]\w*\}?", v):  # a reference, not a value
        return False
    if set(v) <= {"*", "x", "X", ".", "-", "_"}:  # masked already
        return False
    if not any(c.isdigit() for c in v) and (_NAME_VALUE.fullmatch(v) or (_IDENT.fullmatch(v) and _secret_key(v))):
        return False  # a name: OPENAI_API_KEY, a placeholder, a variable called like the key (password = password)
    if kind == "password":
        return len(v) >= 3
    # tokens: long enough, and not a count ("max_tokens: 4096") or a word ("auth: required")
    return len(v) >= 8 and not re.fullmatch(r"[\d.,_]+", v)


def _redact_assignments(text: str, counter: list[int]) -> str:
    """Secret values of ``key <sep> value`` pairs. A pair whose key or value is not a secret is read again
    from its value on: the value may itself start a pair (``returned: aws_secret_access_key = ...``,
    ``{"command": "API_TOKEN=..."}``)."""
    out: list[str] = []
    last = pos = 0
    search = _ASSIGN.search
    # Only a pair whose key holds a hint can be redacted (each word _secret_key names holds one), and
    # source code is mostly other pairs (every assignment, annotation, dict entry): each costs a turn of
    # this loop. So each search starts no earlier than _KEY_SPAN before the next hint at or after pos:
    # the pairs it passes have no hint (their keys lie before that hint), and reading on from their
    # values would only have reached the same next pair (no pair starts between a pair's key and its
    # value: key characters, a quote, the separator). Same pairs, in the same order, as reading every one.
    hints = _hints(text)
    h = -1
    while True:
        if h < pos:
            for hm in hints:
                if hm.start() >= pos:
                    h = hm.start()
                    break
            else:
                break  # no hint from pos on: no pair left that could be redacted
        m = search(text, max(pos, h - _KEY_SPAN))
        if m is None:
            break
        g = m.lastindex or _V3  # the value's group (v1, v2 or v3) is the last one a match closes
        kind = _secret_key(m.group(_KEY))
        if kind is None:  # most pairs (every assignment of source code): read on from the value
            pos = m.start(g)
            continue
        val = m.group(g)
        s, e = m.span(g)
        if g == _V3 and "\\" in val:  # an escaped line break after the value (a JSON dump) is not part of it
            val = _ESCAPED_END.sub("", val)
            e = s + len(val)
        code = g == _V3 and (text[m.end():m.end() + 1] in ("(", "[") or val.startswith(_CODE_PREFIXES)
                             or (_CODE_VALUE.fullmatch(val.strip("`")) is not None and not any(c.isdigit() for c in val)))
        if not _secret_value(val, kind) or code:  # code reading a secret is not the secret
            pos = m.start(g)
            continue
        counter[0] += 1
        out += (text[last:s], _mark("secret"))
        last = pos = e
    return _spliced(text, out, last)


def _spliced(text: str, out: list[str], last: int) -> str:
    """The pieces ``out`` holds, then ``text`` from ``last`` on (``text`` itself when ``out`` is empty)."""
    return "".join([*out, text[last:]]) if out else text


# --- secrets named in prose: a credential word, what it is for, "is"/":"/"=", the value ----------------
# "the wifi password is Tango5...", "api key 8f14e45f...", "the password for the admin account is x9y",
# "pw: hunter2xyz". Read on the lower-cased text (_hints' way: same positions), the value's case read
# back from the text. The value must look like one (_prose_value): prose says "the token is invalid".
_PROSE_WORD = (r"(?<![\w$.\-])(?P<w>(?:api|access|secret|private|license|auth|master|encryption|signing|admin|deploy"
               r"|ssh)[ _\-]?key|pass(?:word|wd|phrase|code)|pwd|pw|pin|secret|token|credentials?|key)s?(?![\w\-])")  # (longer first)
_PROSE_SEP = (r"(?:[ \t]*[:=][ \t]*|[ \t]+(?:is|was|are|were|will be|should be|is now|=|:|-)[ \t]+"
              r"(?:now[ \t]+|still[ \t]+|set[ \t]+to[ \t]+)?|[ \t]+(?:set|changed|reset)[ \t]+to[ \t]+)")
_PROSE_VALUE = (r"(?:(?P<q>[\"'])(?P<qs>[^\"'\n]{6,100})(?P=q)"  # a quoted passphrase: "the password is 'correct horse ...'"
                r"|[\"'`]?(?P<s>[^\s\"'`<>\[\]\\]{4,200}))")
# each start is tried with what the secret is for ("for the admin account", one line at most), then without
# (a bare space, or "to", right after the word: "api key X", "changed my password to X")
_PROSE_PATTERNS = (
    _PROSE_WORD + r"[ \t]+(?:for|of|on|to|at)[ \t]+(?:[^\s=:]+[ \t]+){0,3}?[^\s=:]+" + _PROSE_SEP + _PROSE_VALUE,
    _PROSE_WORD + r"(?:" + _PROSE_SEP + r"|[ \t]+(?:to[ \t]+)?)" + _PROSE_VALUE)
_PROSE = tuple(re.compile(p) for p in _PROSE_PATTERNS)  # on the lower-cased text
_PROSE_ANYCASE = tuple(re.compile(p, re.I) for p in _PROSE_PATTERNS)
_PROSE_HINTS = ("pass", "pw", "pin", "secret", "token", "cred", "key")  # each credential word holds one
_PROSE_HINGE = re.compile("|".join(_PROSE_HINTS))  # on the lower-cased text (or, rarely, _PROSE_HINGE_ANYCASE)
_PROSE_HINGE_ANYCASE = re.compile(_PROSE_HINGE.pattern, re.I)
_PROSE_STRIP = ".,;:!?)]}*"
_UNIT = re.compile(r"v?\d+(?:[.,_]\d+)*[a-z%]{0,3}|\d+(?:x\d+)+", re.I)  # 4096, v1.2.3, 32k, 2x4
# a path (each part a word: /run/secrets/token, ~/.ssh), a flag (--insecure), an anchor or a colour (#setup, #fff)
_PATH_FLAG = re.compile(r"[~.]?(?:/[A-Za-z]?[a-z0-9_.\-]*)+|[~.][a-z0-9_.\-/]*|-{1,2}[a-z][a-z\-]*|#[a-z_\-]+|#[0-9a-fA-F]{3,8}")
_GLOB = re.compile(r"[\w\-]\*(?!\*)$")  # a pattern, not a key: sk-or-v1-*
_PAIR_VALUE = re.compile(r"[A-Za-z_]\w*=")
_WORDY = re.compile(r"[a-z]+\d{0,4}(?:[_\-][a-z]*\d{0,4})+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WEAK_WORDS = {"key", "pin", "token"}  # said of many things that are no secret: longer, stranger values only


def _prose_value(v: str, word: str) -> bool:
    """Whether ``v``, named by ``word`` in prose, is a secret: mixed letters and digits (or symbols),
    long enough, and neither code, a path, a number with a unit, nor a reference."""
    if v.islower() and v.isalpha():  # a word (most of what follows "token" or "password" in prose): no secret
        return False
    if v.startswith(("$", "{", "%", "http", "@", "&", "=")) or "(" in v or "*" in v or _NAME_VALUE.fullmatch(v) \
            or _PAIR_VALUE.match(v) or _PATH_FLAG.fullmatch(v):
        return False  # a reference, a path, a flag, an anchor, a pattern (sk-or-v1-*), a name, a pair of its own
    has_digit = any(c.isdigit() for c in v)
    has_alpha = any(c.isalpha() for c in v)
    weak = word.rstrip("s") in _WEAK_WORDS
    if not has_alpha:  # digits only: a PIN or a passcode
        return word.startswith(("pin", "passcode")) and len(v) >= 4 and v.isdigit()
    if len(v) < (16 if weak else 6) or _UNIT.fullmatch(v):
        return False
    if weak and ((":" in v or "/" in v or "." in v or _UUID.fullmatch(v)) and word.rstrip("s") != "token"
                 or _WORDY.fullmatch(v)):
        return False  # a cache key, a path, a dotted name, an id, a name made of words (build_cache_key_v2)
    if _CODE_VALUE.fullmatch(v) and not has_digit:
        return False
    if has_digit:
        return True
    # no digit: symbols among letters (p@ss!word), or mixed case past the first letter (not a CamelName)
    return (any(c in "!@#$%^&*+=?~" for c in v[1:]) or
            (not weak and len(v) >= 10 and sum(c.isupper() for c in v[1:]) >= 2 and not v.isupper()
             and not re.fullmatch(r"(?:[A-Z][a-z]+)+", v)))


def _passphrase(v: str, word: str) -> bool:
    """A quoted value of words after a password's name: a passphrase, unless it is a sentence about one."""
    words = v.split()
    return (word.startswith(("pass", "pw", "pwd", "secret")) and 3 <= len(words) <= 8
            and not ({w.lower().strip(".,!?") for w in words} & _NOT_PASSPHRASE) and "$" not in v and "{" not in v)


_NOT_PASSPHRASE = {"the", "is", "are", "a", "an", "your", "my", "not", "must", "should", "please", "enter", "required",
                   "invalid", "incorrect", "wrong", "too", "of", "for", "to", "in", "and", "or", "with"}


def _prose_starts(src: str, i: int) -> tuple[int, ...]:
    """Where a credential word holding the hinge word found at ``i`` may start: at the hinge itself, if no
    word character is before it (each name but a key's starts with its hinge), and for "key" also at the
    start of its first part ("api key", "ssh-key", "accesskey"). Checked here, cheaply, before any match."""
    out = () if i and (src[i - 1].isalnum() or src[i - 1] in "_$.-") else (i,)
    if src.startswith("key", i) and i:
        m = _KEY_FIRST.search(src, max(0, i - 12), i)
        if m is not None:
            out = (m.start(), *out)
    return out


_KEY_FIRST = re.compile(r"(?i:api|access|secret|private|license|auth|master|encryption|signing|admin|deploy|ssh)[ _\-]?$")


def _prose_secret(text: str, m: re.Match[str], last: int) -> tuple[int, int] | None:
    """Where the secret of a _PROSE match is in ``text``, if its value is one (and starts at ``last`` or after)."""
    word = m.group("w").lower()
    if m.start("qs") >= last and " " in m.group("qs").strip() and _passphrase(text[m.start("qs"):m.end("qs")], word):
        return m.span("qs")
    if m.start("s") < last:
        return None
    s, e = m.span("s")
    raw = text[s:e]
    v = raw.lstrip("*").rstrip(_PROSE_STRIP)  # (markdown's bold: **hunter2**)
    if v and _prose_value(v, word) and not _GLOB.search(raw.rstrip(".,;:!?)]}")):
        s = e - len(raw.lstrip("*"))
        return s, s + len(v)
    return None


def _redact_prose(text: str, low: str, counter: list[int]) -> str:
    """Secrets named in prose (_PROSE). Each match is tried only where a hinge word is (a plain search,
    ~4x cheaper than running the whole pattern along the text)."""
    src = low if len(low) == len(text) else text
    pats = _PROSE if src is low else _PROSE_ANYCASE
    out: list[str] = []
    last = 0
    for h in (_PROSE_HINGE if src is low else _PROSE_HINGE_ANYCASE).finditer(src):
        if h.start() < last:
            continue
        for j, pat in ((j, pat) for j in _prose_starts(src, h.start()) for pat in pats):
            m = pat.match(src, j)
            span = _prose_secret(text, m, last) if m is not None else None
            if span is not None:
                counter[0] += 1
                out += (text[last:span[0]], _mark("secret"))
                last = span[1]
                break
    return _spliced(text, out, last)


def _hints(text: str):
    """The hint words' matches, in order, with the text's positions."""
    low = text.lower()
    if len(low) == len(text):  # each character lowered to one (only a few expand, as "İ"): same positions
        return _HINT_LOWER.finditer(low)
    return _HINT.finditer(text)


def _sub_count(pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str] | str, text: str,
               counter: list[int]) -> str:
    new, n = pattern.subn(repl, text)
    counter[0] += n
    return new


def _group_repl(kind: str) -> Callable[[re.Match[str]], str]:
    def repl(m: re.Match[str]) -> str:
        s, e = m.span("s")
        b = m.start(0)
        return m.group(0)[:s - b] + _mark(kind) + m.group(0)[e - b:]

    return repl


def _redact_url_queries(text: str, counter: list[int]) -> str:
    def sub(m: re.Match[str]) -> str:
        if not any(w in _URL_KEY_WORDS for w in _words(m.group("key"))) or len(m.group("s")) < 3:
            return m.group(0)
        counter[0] += 1
        return f"{m.group('lead')}{m.group('key')}={_mark('url_credential')}"

    return _URL_QUERY.sub(sub, text) if ("=" in text) else text


# cheap hints (substring searches, far faster than a regex alternation): a group of patterns runs only
# where one of its hints is found, and within it each pattern only where one of its own literals is. The
# groups' hints are their patterns' literals, so the two never disagree. Events, tags and header values
# are redacted on their way out, and most of them hold nothing: they cost these searches only.
_TOKEN_HINTS = tuple(dict.fromkeys(x for _, _, lits in _TOKENS for x in lits))
_CONTEXT_HINTS = tuple(dict.fromkeys(x for _, _, lits in _CONTEXT for x in lits))  # searched in the lower-cased text
_ASSIGN_HINTS = ("secret", "pass", "pw", "token", "key", "credential", "auth", "cookie", "sig", "dsn",
                 "connectionstring", "code", "session", "ticket", "hmac", "assertion", "jwt", "bearer")
# Where a word a secret's key holds is, in any case (_secret_key reads the key lower-cased); positions are
# the text's (_hints: on the text lower-cased unless lowering lengthened it, as "İ" does).
_KEY_HINTS = ("secret", "pass", "pw", "token", "key", "credential", "auth", "cookie", "sig", "dsn", "connectionstring",
              "sessionid")
assert all(any(h in w for h in _KEY_HINTS) for w in _SECRET_WORDS | _PASSWORD_WORDS | {"key"})  # what _secret_key names
_HINT = re.compile("(?i:" + "|".join(map(re.escape, _KEY_HINTS)) + ")")
# The same words found on text.lower(): ~10x faster than the case-insensitive alternation (1.0 -> 0.1 ms
# for 12 KB of source code; redacting it 2.5 -> 1.1 ms).
_HINT_LOWER = re.compile("|".join(map(re.escape, _KEY_HINTS)))
_KEY_SPAN = 83  # a pair starts at most this far before any character of its key ("--", a quote, 80 more)


def redact_secrets(text: str) -> tuple[str, int]:
    """``(text with every secret replaced by [REDACTED:kind], number of secrets replaced)``."""
    if not text:
        return text, 0
    counter = [0]
    if "PRIVATE KEY" in text:
        text = _sub_count(_PEM_BLOCK, _mark("private_key"), text, counter)
        text = _sub_count(_PEM_OPEN, _mark("private_key"), text, counter)
    if any(h in text for h in _TOKEN_HINTS):
        for kind, pat, lits in _TOKENS:
            if any(x in text for x in lits):  # (the text as the patterns before left it)
                text = _sub_count(pat, _mark(kind), text, counter)
    low = text.lower()
    if any(h in low for h in _CONTEXT_HINTS):
        now = low  # the text as the patterns before left it, lower-cased
        for kind, pat, lits in _CONTEXT:
            if any(x in now for x in lits):
                n = counter[0]
                text = _sub_count(pat, _group_repl(kind), text, counter)
                if counter[0] != n:
                    now = text.lower()
    if ("=" in text or ":" in text) and any(h in low for h in _ASSIGN_HINTS):
        text = _redact_url_queries(text, counter)
        text = _redact_assignments(text, counter)
    if any(h in low for h in _PROSE_HINTS):
        text = _redact_prose(text, text.lower(), counter)
    if "-----END" in text:
        text = _sub_count(_PEM_TAIL, _mark("private_key"), text, counter)
    if _PEM_RUN_HINT.search(text) or ("\\n" in text and _PEM_RUN_HINT_ESCAPED.search(text)):
        text = _sub_count(_PEM_RUN, _pem_run, text, counter)
    return text, counter[0]


def _pem_run(m: re.Match[str]) -> str:
    """A run of base64 lines is a key's body unless it is hex (hashes: no upper case)."""
    run = m.group(0)
    return run if run.lower() == run or run.upper() == run else _mark("private_key")


def redact_text(text: str) -> str:
    """``text`` with every secret replaced (:func:`redact_secrets` without the count)."""
    return redact_secrets(text)[0] if text else text


@memoized(4096)
def _field_kind(key: str) -> str | None:
    """``_secret_key`` for a structured field's name, except a signature (a thinking block's is no credential)."""
    kind = _secret_key(key)
    return None if kind is None or {"signature", "sig"} & set(_words(key)) else kind


def redact_field(key: str, value: str) -> str:
    """A structured field's value (a JSON member: a tool call's input, a body's field) with its secrets
    redacted: the whole value when the field's name says it is one (``{"db_password": "..."}``: the
    text alone does not say so), else :func:`redact_text`'s."""
    kind = _field_kind(key)
    if kind is not None and _secret_value(value, kind):
        return _mark("secret")
    return redact_text(value)


def field_names_secret(key: str) -> bool:
    """Whether :func:`redact_field` may redact a value of this field whole."""
    return _field_kind(key) is not None


# Header (and query parameter) names whose values are credentials. Any name containing one of these,
# or any value that looks like a credential, never reaches an event.
_SECRET_HEADER_WORDS = ("authorization", "auth", "api-key", "apikey", "api_key", "cookie", "token", "secret",
                        "session-key", "password", "passwd", "credential", "signature", "account-id")
# whole words of a name (split at - and _): x-goog-api-key, x-foo-key, x-amz-sig
_SECRET_NAME_PARTS = {"key", "sig", "pwd", "jwt", "bearer"}
# names that carry no credential although they contain a word above (their values stay visible)
_NOT_SECRET = {"x-contextwarden-session", "x-contextwarden-agent", "x-contextwarden-bypass", "x-contextwarden-token",
               "anthropic-version", "anthropic-beta", "content-length", "max-tokens"}
# changes with every request although named like a key: never part of the tenant (the OpenAI SDKs send
# an Idempotency-Key with each POST)
_PER_REQUEST = {"idempotency-key", "x-idempotency-key", "x-request-id", "x-client-request-id"}
# an opaque token: long, base64/url-safe, mixing upper case, lower case and digits (a UUID is not one)
_OPAQUE = re.compile(r"(?=[^\s]*[A-Z])(?=[^\s]*[a-z])(?=[^\s]*\d)[A-Za-z0-9_\-+/=.~]{32,}")
# hidden from events although not credentials: Codex's own headers (x-codex-turn-metadata names the
# installation); they change per turn, so they are no part of the tenant either
_HIDDEN_PREFIXES = ("x-codex-",)


@memoized(1024)
def is_secret_name(name: str) -> bool:
    n = name.lower()
    if n in _NOT_SECRET:
        return False
    return any(w in n for w in _SECRET_HEADER_WORDS) or bool(_SECRET_NAME_PARTS & set(re.split(r"[-_.]", n)))


def is_secret_header(name: str, value: Any = None) -> bool:
    """A header whose name OR value looks like a credential (``x-custom-auth-value``, ``x-foo: sk-ant-...``)."""
    if is_secret_name(str(name)) or str(name).lower().startswith(_HIDDEN_PREFIXES):
        return True
    if not isinstance(value, str) or not value or str(name).lower() in _NOT_SECRET:
        return False
    return bool(_OPAQUE.fullmatch(value.strip().removeprefix("Bearer ").removeprefix("bearer "))) or _known_secret(value)


@memoized(4096)  # the same header values come with every request of a client
def _known_secret(value: str) -> bool:
    """Whether a (non-empty) value holds something :func:`redact_secrets` would remove."""
    return redact_secrets(value)[1] > 0


def redact_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, REDACTED if is_secret_header(k, v) else v) for k, v in items]


def redact_path(path: str) -> str:
    """A request path with the credentials in its query string replaced (``?api_key=[REDACTED:...]``)."""
    return redact_text(path) if ("?" in path or "#" in path or ";" in path) else path


def credentials_of(headers: Iterable[tuple[str, str]], path: str = "") -> list[tuple[str, str]]:
    """Every credential a request carries: each auth-looking header (by name, or by a value in a known
    credential format) and each auth-looking query parameter, as sorted (where, value) pairs. Values
    that change with every request (request ids, idempotency keys) are left out: they would give every
    request a tenant of its own."""
    out = []
    for k, v in headers:
        name = str(k).lower()
        if not v or name in _NOT_SECRET or name in _PER_REQUEST or name.startswith("x-contextwarden-"):
            continue
        if is_secret_name(name) or _known_secret(v):
            out.append(("h:" + name, v.removeprefix("Bearer ").removeprefix("bearer ").strip()))
    query = urlsplit(path).query if path else ""
    for k, v in parse_qsl(query, keep_blank_values=False):
        if v and is_secret_name(k):
            out.append(("q:" + k.lower(), v))
    return sorted(out)


def tenant_id(credential: str | None, salt: str) -> str:
    """A salted hash of the credential: stable per key, useless to anyone who reads it."""
    if not credential:
        return "anonymous"
    return "t-" + hashlib.sha256((salt + "\0" + credential).encode()).hexdigest()[:16]


def tenant_of(headers: Iterable[tuple[str, str]], path: str, session: str | None, salt: str) -> str:
    """The tenant of a request: a salted hash of every credential it carries, so users of any auth
    scheme (``x-goog-api-key``, a cookie, ``?key=``) are told apart. A request with none gets a tenant of
    its own session's ("a-..."), which shares memory with nobody (a profile's ``memory.shared_workspace``
    is the way to share)."""
    headers = list(headers)
    for k, v in headers:
        if str(k).lower() == "chatgpt-account-id" and v:
            return tenant_id(v.strip(), salt)  # a ChatGPT plan's bearer token rotates; its account id does not
    creds = credentials_of(headers, path)
    if len(creds) == 1 and creds[0][0] in ("h:x-api-key", "h:authorization", "h:api-key"):
        return tenant_id(creds[0][1], salt)  # the same tenant as before for the common single-key case
    if creds:
        return tenant_id("\0".join(f"{w}={v}" for w, v in creds), salt)
    return "a-" + hashlib.sha256((salt + "\0anonymous\0" + str(session or "")).encode()).hexdigest()[:16]
