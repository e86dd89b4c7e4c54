"""Example privacy stage: replaces e-mail addresses in the outgoing request with ``[email]``.

Place it before every built-in stage that reads the conversation (``docs/writing-a-stage.md``,
"Privacy stages")::

    pipeline:
      order: [redact_emails, budget, strip, tagging, clearing, compression, compaction, recall, memory, breakpoints]

Then no address goes upstream, into memory (which stores what the stages produced), into tags or
events. Anthropic Messages and OpenAI chat requests: message text, text blocks and string tool results.
"""

from __future__ import annotations

import re

from contextwarden import hookimpl
from contextwarden.models import anthropic as am

name = "redact_emails"

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
MARK = "[email]"


def _clean(text: str) -> str:
    return EMAIL.sub(MARK, text) if "@" in text else text


@hookimpl
def cw_request(ctx):
    changed = 0
    msgs = getattr(ctx.request, "messages", None) or []
    for i, msg in enumerate(msgs):
        content = msg.content
        if isinstance(content, str):
            new = _clean(content)
            if new != content:
                # typed messages are frozen: put an edited copy in the message's place
                msgs[i] = msg.model_copy(update={"content": new})
                changed += 1
            continue
        blocks, n = [], 0
        for block in content if isinstance(content, list) else []:
            if isinstance(block, am.TextBlock) and _clean(block.text) != block.text:
                block = block.model_copy(update={"text": _clean(block.text)})
                n += 1
            elif isinstance(block, am.ToolResultBlock) and isinstance(block.content, str) \
                    and _clean(block.content) != block.content:
                block = block.model_copy(update={"content": _clean(block.content)})
                n += 1
            elif isinstance(block, dict) and isinstance(block.get("text"), str) and _clean(block["text"]) != block["text"]:
                # an OpenAI content part: a dict shared with the original, so a new dict, never an edit
                block = {**block, "text": _clean(block["text"])}
                n += 1
            blocks.append(block)
        if n:
            msgs[i] = msg.model_copy(update={"content": blocks})
            changed += n
    if changed:
        ctx.emit("redact_emails", changed=changed)
