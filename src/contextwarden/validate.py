"""The validator: every rewritten body is checked before it is sent; a body with problems is not.

``validate_rewrite(api, new, original)`` returns a list of problems (empty: valid). The pipeline
calls it on every body a stage changed and forwards the client's original bytes when it returns
anything. It checks what the provider would reject, and what a rewrite must not change:

Anthropic Messages
    - ``system`` and ``tools`` byte-equal to the original (they are the cached prefix);
    - every ``tool_use`` in an assistant message answered by a ``tool_result`` in the immediately
      following user message, every ``tool_result`` answering a ``tool_use`` of the message just
      before it, ids unique;
    - the first conversational message is ``user``; consecutive same-role messages only where the
      original had that kind of pair too; messages of any other role (``system`` mid-conversation, or
      a role we do not know) only as copies of the original's, in the original's order;
    - no empty content, no empty or whitespace-only text block;
    - the latest assistant message's ``thinking``/``redacted_thinking`` blocks identical to the
      original's, signatures included;
    - at most 4 ``cache_control`` breakpoints over system + tools + messages;
    - the last message's role unchanged.
OpenAI Chat Completions (and Ollama's /api/chat)
    - ``tools`` unchanged; every assistant ``tool_calls`` id answered by a ``tool`` message in the run
      that follows it, every ``tool`` message's ``tool_call_id`` issued by that assistant message;
    - ``content`` non-null unless the message is an assistant message with ``tool_calls``;
    - the last message's role unchanged.
OpenAI Responses
    - ``instructions`` and ``tools`` unchanged; every ``function_call_output`` (and
      ``custom_tool_call_output``) ``call_id`` issued by an earlier call item;
    - items the server encrypted (``reasoning``, Codex's ``compaction`` items: anything with
      ``encrypted_content``) byte-identical to one of the original's, or gone;
    - a reasoning item and the item it precedes (the call or message it was produced with) kept or
      dropped together, and still adjacent.

Every API: the history up to the provider's latest compaction block or item (``fixed``), as it came.

A defect the client's own body already had (the same tool id unanswered, the same empty message...)
is not reported: the validator judges the rewrite, not the client. Checking is linear in the number of
messages: what a message contributes (its role, tool ids, empty content or text, breakpoints) depends
on its bytes only, and is kept in a cache keyed by those exact bytes, so a history seen in the
session's previous request costs one ``orjson.dumps`` and one dictionary lookup per message.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from hashlib import blake2b
from typing import Any

import orjson

from .lru import BytesMemo
from .models.base import ApiKind

MAX_BREAKPOINTS = 4

# A problem is (key, message): the key identifies the defect independently of message positions, so
# the same defect in the original can be recognised and excused.
Problem = tuple[tuple, str]


def validate_rewrite(api: ApiKind | str, new: dict[str, Any], original: dict[str, Any],
                     original_raw: list[bytes] | None = None, raw: list[bytes | None] | None = None,
                     facts: FactCache | None = None, checkpoints: Checkpoints | None = None,
                     fixed: int = 0) -> list[str]:
    """Problems of the rewritten body ``new`` compared with the client's ``original`` (empty = valid).

    ``original_raw``: ``orjson.dumps`` of each of the original's messages, when the caller has them: a
    message of ``new`` equal to the original's at the same index (or the same index from the end) is
    looked up under those bytes instead of being dumped again. ``raw``: the same for ``new``'s messages
    where the caller knows them (None elsewhere). ``facts`` (the runtime's) and ``checkpoints`` (the
    conversation's) remember what earlier checks found; without them the check starts cold. ``fixed``: the
    first history entries are the provider's (up to its latest compaction block or item: ProviderContext.
    boundary) and must be the original's, as they came."""
    try:
        api = ApiKind(api)
    except ValueError:
        return [f"unknown api {api!r}"]
    if not isinstance(new, dict):
        return ["rewritten body is not a JSON object"]
    if not isinstance(original, dict):
        original = {}
    from .dialects import dialect

    check: Callable[..., list[Problem]] = dialect(api).check  # the dialect's rules
    try:
        found = check(new, original, original_raw, raw, facts, checkpoints)
    except Exception as e:  # a body shaped so oddly that checking it fails is not sent
        return [f"validator could not read the rewritten body: {type(e).__name__}: {e}"]
    hk = dialect(api).history_key
    if fixed and (new.get(hk) or [])[:fixed] != (original.get(hk) or [])[:fixed]:
        found = [*found, (("provider-prefix",), f"{hk}[:{fixed}] (up to the provider's latest compaction) differ from the original's")]
    if not found:
        return []
    try:
        inherited = {k for k, _ in check(original, original)}
    except Exception:
        inherited = set()
    return [msg for key, msg in found if key not in inherited]


# ---------------------------------------------------------------------------- helpers


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _digest(obj: Any) -> bytes:
    return blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str), digest_size=12).digest()


def _same_bytes(name: str, new: dict, original: dict) -> list[Problem]:
    if (name in new) != (name in original):
        return [(("changed", name), f"`{name}` was {'added' if name in new else 'removed'}")]
    if name in new and new[name] is not original[name] and _dumps(new[name]) != _dumps(original[name]):
        return [(("changed", name), f"`{name}` differs from the original (it is the cached prefix and never rewritten)")]
    return []


def _blocks(content: Any) -> list:
    return content if isinstance(content, list) else []


def _role(m: Any) -> Any:
    return m.get("role") if isinstance(m, dict) else None


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def _copies_in_order(kind: str, new_msgs: Iterable[dict], orig_msgs: Iterable[dict]) -> list[Problem]:
    """Messages of roles other than user/assistant must be copies of the original's, in its order."""
    orig = [(_role(m), _digest(m)) for m in orig_msgs]
    problems: list[Problem] = []
    pos = 0
    for m in new_msgs:
        key = (_role(m), _digest(m))
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

    def fact(self, m: dict, compute: Callable[[dict], tuple], key: bytes | None = None) -> tuple:
        return self.get(key if key is not None else orjson.dumps(m, default=str), lambda: compute(m))



def _anthropic_facts(m: dict) -> tuple:
    """(role, content empty, block events in order, breakpoints) of one Anthropic message.

    Block events: ("blank",) an empty text block, ("use", id), ("result", id)."""
    content = m.get("content")
    empty = content is None or (isinstance(content, str) and _blank(content)) or (isinstance(content, list) and not content)
    events: list[tuple] = []
    bps = 0
    for b in _blocks(content):
        if not isinstance(b, dict):
            continue
        if b.get("cache_control") is not None:
            bps += 1
        t = b.get("type")
        if t == "text" and _blank(b.get("text")):
            events.append(("blank",))
        elif t == "tool_use":
            events.append(("use", str(b.get("id", ""))))
        elif t == "tool_result":
            events.append(("result", str(b.get("tool_use_id", ""))))
            bps += sum(1 for x in _blocks(b.get("content")) if isinstance(x, dict) and x.get("cache_control") is not None)
    return (m.get("role"), empty, tuple(events), bps)


# ---------------------------------------------------------------------------- Anthropic


def _last_thinking(msgs: list) -> list:
    """The thinking blocks of the last assistant message."""
    m = next((m for m in reversed(msgs) if _role(m) == "assistant"), None)
    if not m:
        return []
    return [b for b in _blocks(m.get("content")) if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")]


def _aligned_raw(msgs: list, orig_msgs: list, raw: list[bytes] | None) -> list[bytes | None]:
    """For each message of ``msgs``, the original's bytes when it equals the original message at the
    same index or at the same index from the end (stages replace a span or change a few messages)."""
    if raw is None or len(raw) != len(orig_msgs):
        return [None] * len(msgs)
    out: list[bytes | None] = []
    shift = len(orig_msgs) - len(msgs)
    n = len(orig_msgs)
    for i, m in enumerate(msgs):
        if i < n and (orig_msgs[i] is m or orig_msgs[i] == m):
            out.append(raw[i])
        elif shift and 0 <= i + shift < n and orig_msgs[i + shift] == m:
            out.append(raw[i + shift])
        else:
            out.append(None)
    return out


class _Fold:
    """The checks' state after a prefix of the messages (see :class:`Checkpoints`)."""

    __slots__ = ("seen_use", "seen_result", "prev_uses", "prev_role", "first_conv_checked", "others_new", "bps", "problems")

    def __init__(self) -> None:
        self.seen_use: set[str] = set()
        self.seen_result: set[str] = set()
        self.prev_uses: set[str] = set()  # tool_use ids of the message just before, still waiting for results
        self.prev_role: Any = None
        self.first_conv_checked = False
        self.others_new: list[dict] = []
        self.bps = 0  # breakpoints in the messages
        self.problems: list[Problem] = []

    def copy(self) -> _Fold:
        f = _Fold()
        f.seen_use, f.seen_result, f.prev_uses = set(self.seen_use), set(self.seen_result), set(self.prev_uses)
        f.prev_role, f.first_conv_checked, f.bps = self.prev_role, self.first_conv_checked, self.bps
        f.others_new, f.problems = list(self.others_new), list(self.problems)
        return f


class Checkpoints:
    """The fold's state at the end of recently checked bodies, by their messages' exact bytes.

    A coding agent's next request is its previous one plus a few messages, and a rewrite re-applies
    the same stubs and summary, so the checks of every message but the new ones are the previous
    request's: resuming from there makes checking a repeat request O(new messages). Found by the
    number of messages and the last one's bytes, used only when the bytes of every message before it
    and the original's role pairs (which the checks read) are equal too."""

    SCAN = 16  # checkpoints are looked for this far back from the end of a body

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._d: OrderedDict[tuple[int, bytes | None], tuple[tuple, frozenset, _Fold]] = OrderedDict()
        self._lock = threading.Lock()

    def resume(self, keys: list, pairs: frozenset) -> tuple[int, _Fold]:
        n = len(keys)
        with self._lock:
            for k in range(n, max(0, n - self.SCAN), -1):
                got = self._d.get((k, keys[k - 1]))
                if got is None:
                    continue
                stored, p, fold = got
                if p == pairs and stored == tuple(keys[:k]):
                    self._d.move_to_end((k, keys[k - 1]))
                    return k, fold.copy()
        return 0, _Fold()

    def save(self, keys: list, pairs: frozenset, fold: _Fold) -> None:
        if not keys:
            return
        key = (len(keys), keys[-1])
        with self._lock:
            self._d[key] = (tuple(keys), pairs, fold.copy())
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)



def _anthropic(new: dict, original: dict, original_raw: list[bytes] | None = None,
               raw: list[bytes | None] | None = None, _facts: FactCache | None = None,
               _checkpoints: Checkpoints | None = None) -> list[Problem]:
    _facts = _facts if _facts is not None else FactCache(max_bytes=0)
    _checkpoints = _checkpoints if _checkpoints is not None else Checkpoints(size=0)
    problems: list[Problem] = []
    problems += _same_bytes("system", new, original)
    problems += _same_bytes("tools", new, original)
    msgs = new.get("messages")
    orig_msgs = original.get("messages") if isinstance(original.get("messages"), list) else []
    if not isinstance(msgs, list) or not msgs:
        return problems + [(("no-messages",), "`messages` is missing or empty")]

    orig_roles = [m.get("role") if type(m) is dict else _role(m) for m in orig_msgs]
    pairs = frozenset(zip(orig_roles, orig_roles[1:]))
    others_orig = [m for m, r in zip(orig_msgs, orig_roles) if r not in ("user", "assistant")]
    bps = 0
    for key in ("system", "tools"):
        for b in _blocks(new.get(key)):
            if isinstance(b, dict) and b.get("cache_control") is not None:
                bps += 1
    if raw is not None and len(raw) == len(msgs) and None not in raw:
        keys = raw
    else:
        keys = _aligned_raw(msgs, orig_msgs, original_raw)
        if raw is not None and len(raw) == len(msgs):
            keys = [r if r is not None else k for r, k in zip(raw, keys)]
        # (a message that is not an object keys as None: the same defect in the same place)
        keys = [k if k is not None or type(m) is not dict else orjson.dumps(m, default=str) for k, m in zip(keys, msgs)]
    begin, f = _checkpoints.resume(keys, pairs)
    seen_use, seen_result, pf = f.seen_use, f.seen_result, f.problems
    prev_uses, prev_role, first_conv_checked = f.prev_uses, f.prev_role, f.first_conv_checked
    last = len(msgs) - 1
    for i in range(begin, len(msgs)):
        m = msgs[i]
        if i == last and i > 0:
            # also a checkpoint before the last message: a client that moves its cache breakpoint
            # changes that one in the next request, and the ones before stay
            f.prev_uses, f.prev_role, f.first_conv_checked = prev_uses, prev_role, first_conv_checked
            _checkpoints.save(keys[:i], pairs, f)
        if not isinstance(m, dict):
            pf.append((("not-object", i), f"messages[{i}] is not an object"))
            continue
        role, empty, events, n_bp = _facts.fact(m, _anthropic_facts, keys[i])
        f.bps += n_bp
        if role not in ("user", "assistant"):
            f.others_new.append(m)
        elif not first_conv_checked:
            first_conv_checked = True
            if role != "user":
                pf.append((("first-role", role), f"the first user/assistant message is `{role}`, not `user`"))
        if prev_role is not None and role == prev_role and role in ("user", "assistant") and (role, role) not in pairs:
            pf.append((("consecutive", role), f"two consecutive `{role}` messages at {i - 1},{i} (the original has none)"))

        # content
        if empty:
            pf.append((("empty", _digest(m)), f"messages[{i}] ({role}) has empty content"))
        uses: set[str] = set()
        results: set[str] = set()
        for ev in events:
            if ev[0] == "blank":
                pf.append((("empty-text", _digest(m)), f"messages[{i}] ({role}) has an empty text block"))
            elif ev[0] == "use":
                tid = ev[1]
                if role != "assistant":
                    pf.append((("use-role", tid), f"tool_use {tid} in a `{role}` message"))
                if tid in seen_use:
                    pf.append((("dup-use", tid), f"tool_use id {tid} appears twice"))
                seen_use.add(tid)
                uses.add(tid)
            else:
                tid = ev[1]
                if tid in seen_result:
                    pf.append((("dup-result", tid), f"tool_result for {tid} appears twice"))
                seen_result.add(tid)
                results.add(tid)
                if tid not in prev_uses:
                    pf.append((("orphan-result", tid), f"tool_result {tid} in messages[{i}] does not answer a tool_use of the message before it"))
        # pairing with the previous message
        if prev_uses:
            for tid in sorted(prev_uses - results):
                pf.append((("unanswered", tid), f"tool_use {tid} is not answered by a tool_result in messages[{i}]"))
        if results and role != "user":
            pf.append((("result-role", role), f"tool_result in a `{role}` message at {i}"))
        prev_uses = uses
        prev_role = role
    f.prev_uses, f.prev_role, f.first_conv_checked = prev_uses, prev_role, first_conv_checked
    _checkpoints.save(keys, pairs, f)
    problems += pf
    bps += f.bps
    others_new = f.others_new
    for tid in sorted(prev_uses):
        problems.append((("unanswered", tid), f"tool_use {tid} in the last message has no tool_result"))

    problems += _copies_in_order("anthropic", others_new, others_orig)

    if orig_msgs and _role(msgs[-1]) != _role(orig_msgs[-1]):
        problems.append((("last-role",), f"the last message's role changed from `{_role(orig_msgs[-1])}` to `{_role(msgs[-1])}`"))

    th_new, th_orig = _last_thinking(msgs), _last_thinking(orig_msgs)
    if _dumps(th_new) != _dumps(th_orig):
        problems.append((("thinking",), "the latest assistant message's thinking blocks differ from the original's"))

    n = bps
    if n > MAX_BREAKPOINTS:
        problems.append((("breakpoints", n), f"{n} cache_control breakpoints (at most {MAX_BREAKPOINTS})"))
    return problems


# ---------------------------------------------------------------------------- OpenAI chat / Ollama


def _chat(new: dict, original: dict, *_) -> list[Problem]:
    problems: list[Problem] = _same_bytes("tools", new, original)
    msgs = new.get("messages")
    orig_msgs = original.get("messages") if isinstance(original.get("messages"), list) else []
    if not isinstance(msgs, list) or not msgs:
        return problems + [(("no-messages",), "`messages` is missing or empty")]
    issued: set[str] = set()  # ids of the assistant message that opened the current run of tool messages
    waiting: set[str] = set()
    seen: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append((("not-object", i), f"messages[{i}] is not an object"))
            continue
        role = m.get("role")
        calls = m.get("tool_calls") or []
        if role != "tool" and waiting:
            for tid in sorted(waiting):
                problems.append((("unanswered", tid), f"tool call {tid} is not answered by a tool message before messages[{i}]"))
            waiting = set()
        if role == "tool":
            tid = m.get("tool_call_id")
            if tid is not None:
                tid = str(tid)
                if tid not in issued:
                    problems.append((("orphan-result", tid), f"tool message {i} answers {tid}, which the assistant message before it did not call"))
                waiting.discard(tid)
        else:
            issued = set()
        if role == "assistant" and calls:
            for tc in calls:
                tid = str(tc.get("id", "")) if isinstance(tc, dict) else ""
                if not tid:
                    continue  # Ollama tool calls carry no id
                if tid in seen:
                    problems.append((("dup-use", tid), f"tool call id {tid} appears twice"))
                seen.add(tid)
                issued.add(tid)
                waiting.add(tid)
        c = m.get("content")
        if c is None and not (role == "assistant" and calls):
            problems.append((("null-content", _digest(m)), f"messages[{i}] ({role}) has null content"))
    for tid in sorted(waiting):
        problems.append((("unanswered", tid), f"tool call {tid} in the last messages has no tool message"))
    if orig_msgs and _role(msgs[-1]) != _role(orig_msgs[-1]):
        problems.append((("last-role",), f"the last message's role changed from `{_role(orig_msgs[-1])}` to `{_role(msgs[-1])}`"))
    return problems


# ---------------------------------------------------------------------------- OpenAI Responses


_CALL_OUTPUT = {"function_call_output": "function_call", "custom_tool_call_output": "custom_tool_call"}


def _responses(new: dict, original: dict, *_) -> list[Problem]:
    problems: list[Problem] = _same_bytes("instructions", new, original) + _same_bytes("tools", new, original)
    inp = new.get("input")
    if isinstance(inp, str) or inp is None:
        if inp is None and original.get("input") is not None:
            problems.append((("no-input",), "`input` was removed"))
        return problems
    if not isinstance(inp, list):
        return problems + [(("bad-input",), "`input` is neither a string nor a list")]
    calls: set[tuple[str, str]] = set()
    outputs: set[str] = set()
    for i, item in enumerate(inp):
        if not isinstance(item, dict):
            continue
        t = item.get("type")
        if t in ("function_call", "custom_tool_call"):
            calls.add((t, str(item.get("call_id", ""))))
        elif t in _CALL_OUTPUT:
            cid = str(item.get("call_id", ""))
            if (_CALL_OUTPUT[t], cid) not in calls:
                problems.append((("orphan-result", cid), f"input[{i}] {t} {cid} has no earlier {_CALL_OUTPUT[t]}"))
            if cid in outputs:
                problems.append((("dup-result", cid), f"{t} for {cid} appears twice"))
            outputs.add(cid)
        elif "role" in item and t in (None, "message"):
            c = item.get("content")
            if c is None or (isinstance(c, list) and not c):
                problems.append((("empty", _digest(item)), f"input[{i}] ({item.get('role')}) has empty content"))
    orig = original.get("input")
    if isinstance(orig, list) and any(isinstance(it, dict) and (it.get("type") == "reasoning" or "encrypted_content" in it)
                                      for it in orig + inp):
        problems += _encrypted_items(inp, orig)
    return problems


def _item_key(item: Any) -> Any:
    """What identifies an input item across a rewrite: a call and its output by ``call_id`` (clearing
    edits their arguments and output), an item with an ``id`` by it, anything else by its bytes."""
    if not isinstance(item, dict):
        return ("value", _dumps(item))
    t = item.get("type")
    cid = item.get("call_id")
    if isinstance(t, str) and isinstance(cid, str) and (t.endswith("_call") or t.endswith("_call_output")):
        return (t, cid)
    if isinstance(item.get("id"), str):
        return (t, "id", item["id"])
    return ("bytes", _dumps(item))


def _encrypted_items(new: list, orig: list) -> list[Problem]:
    """Encrypted items pass byte for byte; a reasoning item stays right before the item it precedes."""
    problems: list[Problem] = []
    originals = {_dumps(it) for it in orig if isinstance(it, dict) and "encrypted_content" in it}
    where = {}
    for i, it in enumerate(new):
        where.setdefault(_item_key(it), i)
        if isinstance(it, dict) and "encrypted_content" in it and _dumps(it) not in originals:
            problems.append((("encrypted-altered", _item_key(it)),
                             f"input[{i}] ({it.get('type')}) carries encrypted content that is not the original's, byte for byte"))
    for j, it in enumerate(orig[:-1]):
        if not isinstance(it, dict) or it.get("type") != "reasoning":
            continue
        nxt = orig[j + 1]
        a, b = where.get(_item_key(it)), where.get(_item_key(nxt))
        if a is None and b is None:
            continue
        if a is None or b is None or b != a + 1:
            problems.append((("reasoning-split", _item_key(it)),
                             f"reasoning item {it.get('id') or j} was separated from the item it precedes "
                             f"({nxt.get('type') if isinstance(nxt, dict) else 'value'})"))
    return problems
