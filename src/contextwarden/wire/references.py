"""What names something in a text, and its lines as compared: what the replay's fidelity measure
(``offline/fidelity.py``) counts as a reference, what auto-recall (``memory/autorecall.py``) looks for
in an answer, and what the learned policy (``plugins/clearing.py``) looks for in a Read the answer used."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .workingset import EDIT_TOOLS  # (the calls whose ``old_string`` is an edit source)

# Read's / cat -n's line numbers, also behind the memory block's quote mark ("| ": injected memory holds
# the text it brings back line by line, quoted)
_PREFIX = re.compile(r"^(?:\| )? *\d+(?:→|\t)", re.M)
_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"[/~]?\w[\w.\-/]*\w")
_CAMEL = re.compile(r"[a-z][A-Z]")


def _lines(text: str) -> list[str]:
    """Normalised lines: line numbers removed, stripped, and any leading quote marks (``|``) too, on
    both sides (so a Markdown table row and the same row quoted in a memory block compare equal)."""
    return [s for s in (ln.strip().lstrip("| ").rstrip() for ln in _PREFIX.sub("", text).split("\n")) if s]


def distinctive(tok: str) -> bool:
    """A token that names something rather than being a word: a path, an identifier, a version."""
    if len(tok) < 5 or tok.isdigit():
        return False
    if "/" in tok or "_" in tok.strip("_"):
        return True
    core = tok.strip(".-")
    if "." in core and not core.replace(".", "").isdigit():
        return True  # file.py, module.attr (not a bare number)
    if any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok):
        return True
    return bool(_CAMEL.search(tok))


def names(text: str) -> frozenset[str]:
    """The distinctive tokens of a text (:func:`distinctive`: paths, identifiers, versions), trailing dots off."""
    return frozenset(t for t in (x.rstrip(".") for x in _TOKEN.findall(text)) if distinctive(t))


def _tokens(text: str) -> set[str]:
    """Every word and pair of consecutive words, plus every distinctive token and, for a path, each of its suffixes after a slash
    (``/repo/src/a.py`` also answers ``src/a.py`` and ``a.py``)."""
    words = _WORD.findall(text)
    out = set(words)
    out.update(f"{a} {b}" for a, b in zip(words, words[1:]))  # word pairs: a part of a line, in order
    for tok in names(text):
        out.add(tok)
        if "/" in tok:
            parts = tok.split("/")
            for i in range(1, len(parts)):
                s = "/".join(parts[i:])
                if s:
                    out.add(s)
    return out


def strings(obj: Any, skip: frozenset[str] = frozenset()) -> Iterator[str]:
    """Every string value of a wire message or value (not under the keys in ``skip``)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                yield from strings(v, skip)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v, skip)


@dataclass
class Answer:
    """What the model used in its answer: edit sources (lines, the call) and references."""

    sources: list[tuple[list[str], str]] = field(default_factory=list)  # (normalised lines, raw old_string)
    refs: set[str] = field(default_factory=set)


def answer_items(message: dict | None) -> Answer:
    """What an answer (an assistant message, as on the wire) used: the names of its text and its calls'
    inputs, and the lines of each Edit's ``old_string``."""
    out = Answer()
    content = (message or {}).get("content")
    blocks: list[Any] = [{"type": "text", "text": content}] if isinstance(content, str) else content if isinstance(content, list) else []
    for b in blocks:
        t = b.get("type") if isinstance(b, dict) else None
        if t == "text" and isinstance(b.get("text"), str):
            out.refs |= names(b["text"])
        elif t == "tool_use":
            inp: dict = b["input"] if isinstance(b.get("input"), dict) else {}
            edits = [inp, *(inp.get("edits") or [])] if str(b.get("name") or "") in EDIT_TOOLS else []
            olds = [e["old_string"] for e in edits if isinstance(e, dict) and isinstance(e.get("old_string"), str)]
            out.sources += [(ls, o) for o in olds if (ls := _lines(o))]
            skip = set(olds)
            for s in strings(inp):
                if s not in skip:
                    out.refs |= names(s)
    return out


def holds(text: str, item: str, name: bool = True) -> bool:
    """Whether ``text`` holds a name (``name``: as a whole token, or a path's tail after a slash, as
    :func:`_tokens` has it) or a line (as a part of one of its lines)."""
    k = text.find(item)
    if not name:
        return k >= 0
    n = len(text)
    while k >= 0:
        j = k + len(item)
        if (k == 0 or text[k - 1] == "/" or not _in_token(text[k - 1])) and (
                j == n or not (_in_token(text[j]) and (text[j] != "." or j + 1 < n and _in_token(text[j + 1])))):
            return True
        k = text.find(item, k + 1)
    return False


def _in_token(c: str) -> bool:
    return c.isalnum() or c in "_.-/~"
