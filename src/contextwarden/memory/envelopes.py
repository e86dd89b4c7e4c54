"""What coding agents wrap around a person's words, and what a person says to keep a conversation
going: never a query, a tag or a memory item.

Claude Code puts ``<system-reminder>`` blocks (today's date, its task list, the context files) into the
user's turn, and slash-command envelopes (``<command-name>``, ``<local-command-stdout>``); Codex sends
``<environment_context>`` and ``<user_instructions>`` (its AGENTS.md) as user input, and heads each
command's output with ``Chunk ID / Wall time / Process exited with code / Output:`` lines. They are the same
in every session, so they would match every other session's copies of themselves, give every message
the tags ``system-reminder, context, currentDate`` and bring memory to a bare "hello".
"""

from __future__ import annotations

import re

from .lexical import tokenize
from .tagger import stem

TAGS = ("system-reminder", "environment_context", "user_instructions", "INSTRUCTIONS", "command-name",
        "command-message", "command-args", "local-command-stdout", "local-command-stderr",
        "local-command-caveat", "user-prompt-submit-hook", "turn_aborted")
_BLOCK = re.compile(r"<(" + "|".join(map(re.escape, TAGS)) + r")>.*?</\1>", re.S)
# Codex's AGENTS.md message: a heading line, then its instructions block (removed above)
_AGENTS = re.compile(r"^# AGENTS\.md instructions for [^\n]*\n?", re.M)
# Codex's head of a command's output (exec_command): a few "Key: value" lines, then "Output:"
_CODEX_EXEC = re.compile(r"\AChunk ID: [^\n]*\n(?:(?!Output:)[^\n]*\n){0,4}Output:\n")


def strip_envelopes(text: str) -> str:
    """``text`` without the agents' envelopes (see the module's docstring); the same text when it has none."""
    if "<" not in text and "# AGENTS.md" not in text and not text.startswith("Chunk ID: "):
        return text
    out = _CODEX_EXEC.sub("", _AGENTS.sub("", _BLOCK.sub("", text)))
    return out.strip() if out != text else text


# what a person says to keep a conversation going, not what it is about: a message made only of these
# (and stopwords) has nothing to search memory for ("hello", "thanks!", "go on", "is anyone there?")
PHATIC = frozenset(stem(w) for w in """
hello hullo hallo hey hi hiya howdy yo greetings morning afternoon evening night bye goodbye cheers
thanks thank thx ty cheers appreciated welcome sorry excuse pardon
continue continuing proceed carry go ahead resume keep going next more again retry repeat
ok okay alright fine sure yes yeah yep yup no nope nah right correct exactly indeed agreed
anyone anybody someone somebody there here listening awake alive online ping pong test testing
please pls wait hold hmm hm uh um ah oh wow cool nice great good perfect done
""".split())


def content_words(text: str) -> list[str]:
    """The index terms of ``text`` that say what it is about: not stopwords, not greetings and
    acknowledgements (``PHATIC``)."""
    return [t for t in tokenize(text) if t not in PHATIC]


def topical(tags: list[str]) -> list[str]:
    """The tags that name a topic: not a greeting or an acknowledgement ("hello", "thanks")."""
    return [t for t in tags if content_words(t)]
