"""The validator's machinery: every rewritten body is checked before it is sent; a body with problems is not.

Each dialect's ``check`` holds its API's rules (what the provider would reject, and what a rewrite must
not change), and ``Dialect.validate`` runs them: the pipeline calls it on every body a stage changed
and forwards the client's original bytes when it returns anything. A defect the client's own body
already had (the same tool id unanswered, the same empty message...) is not reported: the validator
judges the rewrite, not the client. Checking is linear in the number of messages: what a message
contributes (its role, tool ids, empty content or text, breakpoints) depends on its bytes only, and is
kept in a :class:`FactCache` keyed by those exact bytes, and the checks' state at the end of recent
bodies in :class:`Checkpoints`, so a history seen in the session's previous request costs one
``orjson.dumps`` and one dictionary lookup per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import repeat
from typing import Any

import orjson

from ..util.lru import LRU, BytesMemo

# A problem is (key, message): the key identifies the defect independently of message positions, so
# the same defect in the original can be recognised and excused.
Problem = tuple[tuple[Any, ...], str]


# ---------------------------------------------------------------------------- helpers


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def digest(obj: Any) -> bytes:
    return blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str), digest_size=12).digest()


def same_bytes(name: str, new: dict[str, Any], original: dict[str, Any]) -> list[Problem]:
    if (name in new) != (name in original):
        return [(("changed", name), f"`{name}` was {'added' if name in new else 'removed'}")]
    if name in new and new[name] is not original[name] and dumps(new[name]) != dumps(original[name]):
        return [(("changed", name), f"`{name}` differs from the original (it is the cached prefix and never rewritten)")]
    return []


def blocks(content: Any) -> list[Any]:
    return content if isinstance(content, list) else []


def role_of(m: Any) -> Any:
    return m.get("role") if isinstance(m, dict) else None


def roles_of(msgs: list[Any]) -> list[Any]:
    """:func:`role_of` of each message, at C speed when every one is an object (as they are)."""
    if all(map(isinstance, msgs, repeat(dict))):
        return list(map(dict.get, msgs, repeat("role")))
    return [role_of(m) for m in msgs]


def blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def copies_in_order(kind: str, new_msgs: Iterable[dict[str, Any]], orig_msgs: Iterable[dict[str, Any]]) -> list[Problem]:
    """Messages of roles other than user/assistant must be copies of the original's, in its order."""
    orig = [(role_of(m), digest(m)) for m in orig_msgs]
    problems: list[Problem] = []
    pos = 0
    for m in new_msgs:
        key = (role_of(m), digest(m))
        try:
            pos = orig.index(key, pos) + 1
        except ValueError:
            if key in orig:
                problems.append((("order", kind, key), f"role `{key[0]}` message moved out of the original's order"))
            else:
                problems.append((("invented", kind, key), f"role `{key[0]}` message that is not in the original"))
    return problems


# ---------------------------------------------------------------------------- per-message facts


class FactCache(BytesMemo):
    """What a message contributes to the checks, keyed by its exact JSON bytes (a wrong fact could let
    an invalid body through), bounded by bytes."""

    def fact(self, m: dict[str, Any], compute: Callable[[dict[str, Any]], tuple[Any, ...]], key: bytes | None = None) -> tuple[Any, ...]:
        fact: tuple[Any, ...] = self.get(key if key is not None else orjson.dumps(m, default=str), compute, m)
        return fact



# ---------------------------------------------------------------------------- Anthropic


def aligned_raw(msgs: list[Any], orig_msgs: list[Any], raw: list[Any] | None) -> list[Any]:
    """For each message of ``msgs``, the original's ``raw`` value (its bytes, its token count...) when it
    equals the original message at the same index or at the same index from the end (stages replace a
    span or change a few messages); None elsewhere."""
    if raw is None or len(raw) != len(orig_msgs):
        return [None] * len(msgs)
    shift, n = len(orig_msgs) - len(msgs), len(orig_msgs)
    return [raw[i] if i < n and (orig_msgs[i] is m or orig_msgs[i] == m) else
            raw[i + shift] if shift and 0 <= i + shift < n and orig_msgs[i + shift] == m else None
            for i, m in enumerate(msgs)]


@dataclass(slots=True)
class Fold:
    """The checks' state after a prefix of the messages (see :class:`Checkpoints`)."""

    seen_use: set[str] = field(default_factory=set)
    seen_result: set[str] = field(default_factory=set)
    prev_uses: set[str] = field(default_factory=set)  # tool_use ids of the message just before, still waiting for results
    prev_role: Any = None
    first_conv_checked: bool = False
    others_new: list[dict[str, Any]] = field(default_factory=list)
    bps: int = 0  # breakpoints in the messages
    problems: list[Problem] = field(default_factory=list)

    def copy(self) -> Fold:
        return Fold(set(self.seen_use), set(self.seen_result), set(self.prev_uses), self.prev_role, self.first_conv_checked,
                    list(self.others_new), self.bps, list(self.problems))


class Checkpoints:
    """The fold's state at the end of recently checked bodies, by their messages' exact bytes.

    A coding agent's next request is its previous one plus a few messages, and a rewrite re-applies
    the same stubs and summary, so the checks of every message but the new ones are the previous
    request's: resuming from there makes checking a repeat request O(new messages). Found by the
    number of messages and the last one's bytes, used only when the bytes of every message before it
    are equal too."""

    SCAN = 16  # checkpoints are looked for this far back from the end of a body

    def __init__(self, size: int = 64) -> None:
        self._d = LRU(size)

    def resume(self, keys: list[Any]) -> tuple[int, Fold]:
        n = len(keys)
        for k in range(n, max(0, n - self.SCAN), -1):
            got = self._d.get((k, keys[k - 1]), _none)
            if got is not None and got[0] == keys[:k]:
                return k, got[1].copy()
        return 0, Fold()

    def save(self, keys: list[Any], fold: Fold, final: bool = False) -> None:
        """Keep ``fold`` as the state after ``keys`` (``final``: the caller changes it no more: not copied)."""
        if keys:
            self._d.put((len(keys), keys[-1]), (keys[:], fold if final else fold.copy()))


def _none() -> None:
    return None


def last_role_changed(msgs: list[Any], orig_msgs: list[Any]) -> list[Problem]:
    if orig_msgs and role_of(msgs[-1]) != role_of(orig_msgs[-1]):
        return [(("last-role",), f"the last message's role changed from `{role_of(orig_msgs[-1])}` to `{role_of(msgs[-1])}`")]
    return []
