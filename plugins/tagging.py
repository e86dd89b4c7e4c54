"""Built-in stage ``tagging``: topic tags of the turn being asked, and the topics the history is on.

``ctx.notes["tags"]`` gets the keyword tags of the last user message (cleaned of channel envelopes by
the ``strip`` stage); ``ctx.notes["active_tags"]`` the tags of the ``tagging.active_turns`` messages just
before it, which the history still holds in full: the memory stage does not inject items that are only
about those topics. Both go out in a ``tags`` event (and the ``turn`` event repeats the turn's tags).
The tagger works offline; ``tagging.embedding_tagger`` adds the nearest known tags by embedding.
"""

from __future__ import annotations

import contextlib
import time
from typing import cast

from contextwarden import hookimpl
from contextwarden.memory import produced
from contextwarden.memory.client import NullTagger
from contextwarden.memory.envelopes import strip_envelopes
from contextwarden.memory.phatic import topical
from contextwarden.memory.retrieve import build_query, history_items, human_text, role_of
from contextwarden.memory.service import get_service
from contextwarden.memory.tagger import Tagger, tag_key
from contextwarden.util import last_of


def tagger_for(ctx) -> Tagger | NullTagger:
    """The memory service's tagger when there is one (it may embed), else a keyword tagger."""
    runtime, t = ctx.runtime, ctx.settings.tagging
    with contextlib.suppress(Exception):
        svc = get_service(runtime)
        if svc is not None and svc.tagger.settings == t:
            return svc.tagger
    key = (t.max_tags, t.merge_similarity)
    taggers = runtime.memo("tagging.taggers", dict)
    tagger = taggers.get(key)
    if tagger is None:
        tagger = taggers[key] = Tagger(t)
    return tagger


_SPOKEN = ("tagging", "spoken")  # a message's memo: a user message with text a person wrote


def last_spoken(ctx, msgs: list) -> int | None:
    """Index of the last user message with text a person wrote (the one ``build_query`` looks for,
    walking back over a tool loop's results), from a flag remembered with each message: a repeat
    request reads only its new messages (``msgs``: the request's typed messages, or the ones it was
    prepared with)."""
    api = ctx.api
    flags = ctx.history.memos(msgs, _SPOKEN, lambda m: role_of(m) == "user" and bool(human_text(api, m).strip()))
    return last_of(flags, True)


@hookimpl
def cw_request(ctx) -> None:
    t = ctx.settings.tagging
    if not t.enabled or ctx.helper_call:  # a title or topic prompt's words are the client's, not the topic
        return
    t0 = time.perf_counter()
    tagger = tagger_for(ctx)
    msgs = produced.view(ctx)  # as the stages before this one left them (a privacy stage's work)
    clean = ctx.notes.get("clean_text") or {}
    current = history_items(ctx.api, ctx.request)
    if len(current) == len(msgs) and not isinstance(ctx.notes.get("compaction"), dict):  # (the view: message i is current[i])
        idx = last_spoken(ctx, current)
        query = None if idx is None else build_query(ctx.api, [msgs[idx]], {0: clean[idx]} if idx in clean else None,
                                                     context_messages=0)[0]
    else:
        query, idx = build_query(ctx.api, cast(list, msgs), clean, context_messages=0)
    tags = topical(tagger.tag(query.text)) if query is not None else []
    active: set[str] = set()
    if idx is not None and t.active_turns > 0:
        for j in range(idx - 1, max(-1, idx - 1 - t.active_turns), -1):
            if role_of(msgs[j]) == "system":
                continue
            text = human_text(ctx.api, msgs[j])
            c = clean.get(j)
            if c and len(c) <= len(text):
                text = c
            active.update(tag_key(x) for x in tagger.tag(strip_envelopes(text)))
    ctx.notes["tags"] = tags
    ctx.notes["active_tags"] = sorted(active)
    ctx.emit("tags", tags=tags, active=sorted(active), ms=round((time.perf_counter() - t0) * 1000, 3))
