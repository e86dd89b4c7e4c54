"""What one remembered piece of a conversation is, and how it maps to a Chroma record.

Identity is content: ``MemoryItem.id`` is the tenant plus the hash of the text, so the same tool output
seen by two agents (or two sessions) of one tenant is stored once. Chroma rejects ``None`` and empty
lists as metadata values, so those fields are left out; tags are a list (filter with
``where={"tags": {"$contains": "auth"}}``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .ids import content_hash, id_of_hash

KINDS = ("message", "tool_result", "chunk")
OPTIONAL = ("tool", "workspace", "source_id", "project", "speaker", "when")  # metadata only when set


@dataclass
class MemoryItem:
    """One message, tool result, or chunk of a long tool result, as stored."""

    text: str
    session: str
    tenant: str
    turn: int  # index of the message in the conversation
    role: str  # user / assistant / tool / system
    kind: str  # "message" | "tool_result" | "chunk"
    tool: str | None = None
    tags: list[str] = field(default_factory=list)
    ts: float = field(default_factory=time.time)
    workspace: str | None = None
    # memory_id of the original text this item was cut from (before redaction and chunking): the id a
    # clearing stub names. Set by ingestion for every item; None only for items built by hand.
    source_id: str | None = None
    # the project the client worked in (its working directory, memory.project.project_of): retrieval ranks
    # the current project's items above the rest of the tenant's memory. None: the client did not say.
    project: str | None = None
    # who said it and when, as the message wrote them (memory.turns: a speaker header, a date before it)
    speaker: str | None = None
    when: str | None = None
    # (text, its sha256): hashed once however often the id is asked for, re-hashed if the text changes
    _digest: tuple[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def hash(self) -> str:
        """SHA-256 of the text (cached)."""
        d = self._digest
        if d is None or d[0] is not self.text:
            d = self._digest = (self.text, content_hash(self.text))
        return d[1]

    @property
    def id(self) -> str:
        """``tenant:hash``: identical content is stored once per tenant (cross-agent dedup)."""
        return f"{self.tenant}:{self.hash[:32]}"

    @property
    def memory_id(self) -> str:
        """The short id of this item's own text (``m-…``)."""
        return id_of_hash(self.hash)

    def to_metadata(self) -> dict[str, Any]:
        """Chroma metadata: scalars only, ``None`` left out."""
        md: dict[str, Any] = {
            "session": self.session,
            "tenant": self.tenant,
            "turn": int(self.turn),
            "role": self.role,
            "kind": self.kind,
            "ts": float(self.ts),
            "hash": self.hash,
            "mid": self.memory_id,
        }
        if tags := clean_tags(self.tags):
            md["tags"] = tags
        md.update((k, v) for k in OPTIONAL if (v := getattr(self, k)) is not None)
        return md

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-able record (the JSONL export format): ``id``, ``text`` and the metadata."""
        return {"id": self.id, "text": self.text, **self.to_metadata()}

    @classmethod
    def from_record(cls, text: str | Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> MemoryItem:
        """Rebuild an item from a Chroma document + metadata, or from one flat export record."""
        if metadata is None:
            if not isinstance(text, Mapping):
                raise TypeError("from_record(text, metadata) or from_record(record)")
            metadata, text = text, text["text"]
        md = metadata
        return cls(
            text=str(text),
            session=str(md.get("session", "")),
            tenant=str(md.get("tenant", "anonymous")),
            turn=int(md.get("turn", 0)),
            role=str(md.get("role", "user")),
            kind=str(md.get("kind", "message")),
            tags=parse_tags(md.get("tags")),
            ts=float(md.get("ts", time.time())),
            **{k: md.get(k) or None for k in OPTIONAL},
        )


def clean_tags(tags: list[str] | None) -> list[str]:
    """Non-empty, stripped, de-duplicated tags in their order."""
    out: list[str] = []
    for t in tags or []:
        t = str(t).strip()
        if t and t not in out:
            out.append(t)
    return out


def parse_tags(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(t) for t in value]
    return [t for t in str(value).split(",") if t]
