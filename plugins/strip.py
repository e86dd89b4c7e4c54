"""Built-in stage ``strip``: removes channel envelopes from message text.

OpenClaw (and the virtual-context tagger plugin) wrap what a user typed in transport metadata:

- ``[vc:prompt]`` marker on the first line (``vc_prompt``);
- ``[vc:user]...[/vc:user]`` wrapper around the real text, which is kept (``vc_user``);
- ``System: [2026-01-02 10:00:00 UTC] Event happened`` lines prepended to the message (``system_timestamp``);
- a channel header such as ``[Telegram Alice (@alice) id:123 +5m 2026-01-02 10:00 UTC]`` (``channel_header``);
- a ``[message_id: 123]`` footer (``message_id``);

plus the profile's ``strip.user_patterns`` (regular expressions whose matches are removed).

By default the wire is left alone: the cleaned plain text of every message it changed goes to
``ctx.notes["clean_text"]`` (message index -> text) for tagging and memory, which would otherwise learn
"telegram" and "message_id" as topics. With ``strip.rewrite_outgoing`` the user messages' text blocks
are also rewritten; cleaning is a pure function of the text, so an old message comes out the same
every turn and the provider's cached prefix stays stable. A message that would become empty is left
as it was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from contextwarden import hookimpl
from contextwarden.util.lru import LRU
from contextwarden.wire.dialects import NO_PROVIDER, dialect

_VC_PROMPT = re.compile(r"\A\s*\[vc:prompt\][ \t]*(?:\r?\n\s*)?")
_VC_USER = re.compile(r"\[vc:user\](.*?)\[/vc:user\]", re.S)
_SYSTEM_EVENTS = re.compile(r"\A(?:[ \t]*System:[ \t]*\[[^\]\n]*\][^\n]*(?:\r?\n|\Z)\s*)+")
_CHANNELS = ("Telegram|WhatsApp|Discord|Slack|Signal|iMessage|BlueBubbles|WebChat|Matrix|Teams|Mattermost|"
             "Line|LINE|Zalo|Feishu|Lark|Google Chat|GoogleChat|Twitch|Nostr|IRC|SMS|Email")
_CHANNEL_HEADER = re.compile(
    r"\A\s*\[(?:[A-Z][A-Za-z]*[ \t][^\]\n]*\bid:-?\w+\b[^\]\n]*"  # any channel, with an id:N field
    rf"|(?:{_CHANNELS})[ \t][^\]\n]*\d{{4}}-\d{{2}}-\d{{2}}[^\]\n]*)\][ \t]*(?:\r?\n)?")  # known channel, dated
_MESSAGE_ID = re.compile(r"(?:\r?\n)?[ \t]*\[message_id:[ \t]*[^\]\n]+\][ \t]*\s*\Z")

BUILTIN = ("vc_prompt", "vc_user", "system_timestamp", "channel_header", "message_id")


def _sub(rx: re.Pattern, repl: str | Callable, needle: str | None = None, head: bool = False,
         tail: int = 0) -> Callable[[str], tuple[str, int]]:
    """A pattern step. Long tool outputs pass through here every request, so each built-in first checks
    cheaply whether it can match at all: ``head`` patterns only where the text starts with ``needle``,
    ``tail`` patterns only in the last ``tail`` characters, others only when ``needle`` occurs."""

    def step(text: str) -> tuple[str, int]:
        if needle is not None:
            found = text.lstrip().startswith(needle) if head else needle in (text[-tail:] if tail else text)
            if not found:
                return text, 0
        if tail and len(text) > tail:
            cut = len(text) - tail
            new, n = rx.subn(repl, text[cut:])
            return (text[:cut] + new, n) if n else (text, 0)
        return rx.subn(repl, text)

    return step


_BUILTIN_FNS: dict[str, Callable[[str], tuple[str, int]]] = {
    "vc_prompt": _sub(_VC_PROMPT, "", "[vc:prompt]", head=True),
    "vc_user": _sub(_VC_USER, lambda m: m.group(1).strip(), "[vc:user]"),
    "system_timestamp": _sub(_SYSTEM_EVENTS, "", "System:", head=True),
    "channel_header": _sub(_CHANNEL_HEADER, "", "[", head=True),
    "message_id": _sub(_MESSAGE_ID, "", "[message_id:", tail=256),
}


# Cleaned texts remembered per Stripper (see ``Stripper.clean``): a repeat request re-sends the whole
# history, so an old message costs one lookup instead of every pattern step. Bounded by entries and by
# the characters held (keys and cleaned texts); least recently used first out.
MEMO_ENTRIES = 8192
MEMO_CHARS = 16_000_000
_SHORT_KEY = 256  # texts up to this long are their own key; longer ones are keyed by length and both ends
_ENDS = 96


class Stripper:
    """The compiled patterns of one profile; ``clean(text)`` is deterministic."""

    def __init__(self, enabled: list[str], user_patterns: list[str]) -> None:
        self.key = ("strip", tuple(enabled), tuple(user_patterns))  # names its results in per-message memos
        # text -> (text, cleaned, counts); one memo per Stripper, so other patterns never share an entry
        self._memo = LRU(MEMO_CHARS, max_item=MEMO_CHARS // 4, max_count=MEMO_ENTRIES)
        # fixed order: the marker and wrappers first, then headers, then the footer
        self.steps: list[tuple[str, Callable[[str], tuple[str, int]]]] = [
            (name, _BUILTIN_FNS[name]) for name in BUILTIN if name in enabled]
        self.errors = [f"unknown strip pattern {name!r} (known: {', '.join(BUILTIN)})" for name in enabled
                       if name not in _BUILTIN_FNS]
        for i, pat in enumerate(user_patterns):
            try:
                rx = re.compile(pat)
            except re.error as e:
                self.errors.append(f"strip.user_patterns[{i}] {pat!r}: {e}")
                continue
            self.steps.append((f"user_{i}", functools.partial(rx.subn, "")))

    def clean(self, text: str) -> tuple[str, dict[str, int]]:
        """The text without envelopes, and how many matches of each pattern were removed.

        Memoised by the exact text (a pure function of the text and this Stripper's patterns): a long
        text is looked up by its length and both ends, and the entry is used only when its whole text
        is equal (a memory compare, much cheaper than hashing it). The counts are a fresh dict."""
        if not text:
            return text, {}
        n = len(text)
        key: Any = text if n <= _SHORT_KEY else (n, text[:_ENDS], text[-_ENDS:])
        e = self._memo.peek(key)
        if e is None or not (e[0] is text or e[0] == text):
            out, counts = self._clean(text)
            e = (text, out, tuple(counts.items()))
        if self._memo.young.get(key) is not e:  # (new, or used again from the old generation)
            self._memo.put(key, e, n + (len(e[1]) if e[1] is not text else 0))
        return e[1], dict(e[2])

    def _clean(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        out = text
        for name, fn in self.steps:
            out, n = fn(out)
            if n:
                counts[name] = counts.get(name, 0) + n
        if counts:
            out = out.strip()
        return out, counts


def stripper_for(settings, memo: dict) -> Stripper:
    """The compiled stripper of a ``strip`` settings section (compiled once per distinct setting, in
    ``memo``: the runtime's ``memo("strip.strippers", dict)``)."""
    key = (tuple(settings.enabled_patterns), tuple(settings.user_patterns))
    s = memo.get(key)
    if s is None:
        s = memo[key] = Stripper(list(settings.enabled_patterns), list(settings.user_patterns))
    return s


@hookimpl
def cw_configure(runtime) -> None:
    s = stripper_for(runtime.settings.strip, runtime.memo("strip.strippers", dict))
    for err in s.errors:
        runtime.bus.emit("error", {"where": "strip", "message": err, "action": "pattern skipped"})


def _items(d, req) -> list:
    """The request's messages (a Responses ``input`` that is one string: one user message)."""
    items = d.messages_of(req)
    if items is None:
        inp = getattr(req, d.history_key, None)
        items = [inp] if isinstance(inp, str) else []
    return items


def _clean_one(s: Stripper, text_of, m: Any) -> tuple[str | None, tuple]:
    """A message's cleaned text and what was removed (None, () when nothing was)."""
    text, counts = s.clean(text_of(m))
    return (text, tuple(counts.items())) if counts else (None, ())


class CleanAhead:
    """``ctx.notes["clean_text"]`` as this stage will write it, read before it has run (another stage's
    ``cw_request_start``): a message's cleaned text, worked out only for the messages asked for."""

    def __init__(self, stripper: Stripper, text_of, items: list) -> None:
        self._s, self._text_of, self._items = stripper, text_of, items

    def __bool__(self) -> bool:  # (a reader may take a falsy clean_text for none)
        return True

    def get(self, i: int, default=None):
        if not 0 <= i < len(self._items):
            return default
        text = _clean_one(self._s, self._text_of, self._items[i])[0]
        return default if text is None else text


def clean_text_ahead(ctx) -> CleanAhead | dict:
    """What this stage will put in ``ctx.notes["clean_text"]``, for a reader that runs before it (the
    memory stage's search, started as the request is read): empty when the stage is not in the
    pipeline. Cleaning is a pure function of the text, so it is the same as the stage's."""
    if not ctx.runtime.runs("strip"):
        return {}
    d = dialect(ctx.api)
    return CleanAhead(stripper_for(ctx.settings.strip, ctx.runtime.memo("strip.strippers", dict)), d.text_of,
                      _items(d, ctx.request))


@hookimpl
def cw_request(ctx) -> None:
    s = stripper_for(ctx.settings.strip, ctx.runtime.memo("strip.strippers", dict))
    req = ctx.request
    d = dialect(ctx.api)
    items = _items(d, req)
    clean: dict[int, str] = {}
    totals: dict[str, int] = {}
    cleaned = 0
    history = ctx.history
    strip_one = functools.partial(_clean_one, s, d.text_of)
    # a message seen before, unchanged: its result is remembered with it (history.Entry.memo)
    results = history.memos(items, s.key, strip_one) if history is not None else list(map(strip_one, items))
    for i, (text, counts) in enumerate(results):
        if counts:
            clean[i] = text
            cleaned += 1
            for k, v in counts:
                totals[k] = totals.get(k, 0) + v
    # only the messages it changed: a reader falls back to a message's own text (which is what
    # cleaning gives for the others)
    ctx.notes["clean_text"] = clean

    rewritten = 0
    if ctx.settings.strip.rewrite_outgoing and cleaned:
        def fn(text: str) -> str | None:
            new, counts = s.clean(text)
            return new if counts and new.strip() else None

        # the user's messages with their text cleaned (copies: the client's objects are never mutated),
        # after the provider's latest compaction (what precedes it goes as it came)
        fixed = ctx.notes.get("provider", NO_PROVIDER).boundary
        new = [d.rewrite_text(m, fn) if i >= fixed else None for i, m in enumerate(items)]
        rewritten = sum(x is not None for x in new)
        if rewritten:
            new = [m if x is None else x for m, x in zip(items, new)]
            setattr(req, d.history_key, new[0] if isinstance(getattr(req, d.history_key), str) else new)
    ctx.emit("strip", messages=len(items), cleaned=cleaned, patterns=totals, rewritten=rewritten,
             rewrite_outgoing=ctx.settings.strip.rewrite_outgoing)


@hookimpl
def cw_reapply(ctx) -> None:
    """With ``strip.rewrite_outgoing``, the rewrite is a pure function of each message, made again on
    every request: the session's decided state (the pipeline's fall-back) has it too, or a fall-back
    would change messages inside the cached prefix. Without it, strip changes nothing that goes out."""
    if ctx.settings.strip.rewrite_outgoing:
        cw_request(ctx)
