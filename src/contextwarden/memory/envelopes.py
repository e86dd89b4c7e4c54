"""What coding agents wrap around a person's words: never a query or a tag, and never what an item is
searched by (a tool result is stored verbatim, for recall by id, but indexed and embedded without it).

Claude Code puts ``<system-reminder>`` blocks (today's date, its task list, the context files) into the
user's turn, slash-command envelopes (``<command-name>``, ``<local-command-stdout>``) and the line
``[Request interrupted by user for tool use]`` when the person stopped it; Codex sends
``<environment_context>`` and ``<user_instructions>`` (its AGENTS.md) as user input, and heads each
command's output with ``Chunk ID / Wall time / Process exited with code / Output:`` lines. They are the same
in every session, so they would match every other session's copies of themselves, give every message
the tags ``system-reminder, context, currentDate`` and bring memory to a bare "hello". (What a person
says to keep a conversation going is :mod:`~contextwarden.memory.phatic`'s.)
"""

from __future__ import annotations

import re

TAGS = ("system-reminder", "environment_context", "user_instructions", "INSTRUCTIONS", "command-name",
        "command-message", "command-args", "local-command-stdout", "local-command-stderr",
        "local-command-caveat", "user-prompt-submit-hook", "turn_aborted")
_BLOCK = re.compile(r"<(" + "|".join(map(re.escape, TAGS)) + r")>.*?</\1>", re.S)
# Codex's AGENTS.md message: a heading line, then its instructions block (removed above)
_AGENTS = re.compile(r"^# AGENTS\.md instructions for [^\n]*\n?", re.M)
# Codex's head of a command's output (exec_command): a few "Key: value" lines, then "Output:"
_CODEX_EXEC = re.compile(r"\AChunk ID: [^\n]*\n(?:(?!Output:)[^\n]*\n){0,4}Output:\n")
# Claude Code's line in the person's turn when they stopped a reply or a tool call
_INTERRUPTED = "[Request interrupted by user"
_INTERRUPTION = re.compile(r"^\[Request interrupted by user(?: for tool use)?\][ \t]*(?:\n|$)", re.M)  # (a line alone)
# the client's standing context: Claude Code's context reminder (its CLAUDE.md files, today's date), Codex's
# AGENTS.md message and environment; sent once, at the conversation's start, and meant for every turn after
_CONTEXT = re.compile(
    r"<system-reminder>\s*As you answer the user's questions, you can use the following context:.*?</system-reminder>"
    r"|# AGENTS\.md instructions for [^\n]*\n+<INSTRUCTIONS>.*?</INSTRUCTIONS>"
    r"|<(user_instructions|environment_context)>.*?</\1>", re.S)


def strip_envelopes(text: str) -> str:
    """``text`` without the agents' envelopes (see the module's docstring); the same text when it has none."""
    if "<" not in text and "# AGENTS.md" not in text and not text.startswith("Chunk ID: ") and _INTERRUPTED not in text:
        return text
    out = _INTERRUPTION.sub("", _CODEX_EXEC.sub("", _AGENTS.sub("", _BLOCK.sub("", text))))
    return out.strip() if out != text else text


def searchable(text: str) -> str:
    """What an item is indexed and embedded by: its text without the agents' envelopes (Codex's head of a
    command's output, Claude Code's reminder after a Read), the text itself when that leaves nothing.
    The item itself stays verbatim (recall by id returns it as the agent saw it)."""
    return strip_envelopes(text) or text


def standing_context(text: str) -> list[str]:
    """The blocks of ``text`` that hold the client's standing instructions and context, verbatim (a summary of
    the turns that carried them must carry them whole: the client does not send them again)."""
    return [m.group(0) for m in _CONTEXT.finditer(text)] if "<" in text else []
