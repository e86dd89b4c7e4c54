"""What names something in a text, and its lines as compared: what the replay's fidelity measure
(``offline/fidelity.py``) counts as a reference, and what auto-recall (``memory/autorecall.py``) looks for
in an answer."""

from __future__ import annotations

import re

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
