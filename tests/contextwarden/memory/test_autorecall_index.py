"""Automatic recall's term search through a conversation's TermIndex finds what a scan of every lost text
finds, and reads each lost text once, not on every request."""

from __future__ import annotations

import random
import re

from contextwarden.memory import autorecall
from contextwarden.memory.autorecall import (
    TERMS_CHARS,
    Found,
    Kept,
    Lost,
    Memos,
    TermIndex,
    find,
    pick_terms,
    read_answer,
    terms_of,
)
from contextwarden.memory.ids import memory_id


def scan_find(answer, lost, kept, done, limit=3, memo=None):
    """The path and term search as they were before the index (every lost text scanned for the answer's
    terms on every request), with the ids and quotes steps of :func:`find` left out: the reference to match.
    Which of a term's owners comes back is :func:`pick_terms`, shared: what is tested is who owns what."""
    out: list[Found] = []
    taken: set[str] = set(answer.recalling)

    def add(item, why, ref, again=False, whole=True):  # noqa: E306
        if item.memory_id not in taken and (again or item.memory_id not in done) and len(out) < limit:
            taken.add(item.memory_id)
            out.append(Found(item, why, ref, whole))

    newest = sorted(lost, key=lambda x: -x.turn)
    for p in sorted(answer.paths):
        for x in newest:
            inp = x.tool_input if isinstance(x.tool_input, dict) else {}
            if x.kind == "tool_result" and any(inp.get(k) == p for k in ("file_path", "path", "notebook_path")):
                add(x, "path", p)
                break
    owners: dict[str, list[Lost]] = {}
    for x in newest:
        inside = [t for t in answer.terms if t in x.text]
        if not inside:
            continue
        own = answer.terms & terms_of(x.memory_id, x.text, memo.terms if memo else None)
        if len(x.text) > TERMS_CHARS:
            own |= {t for t in inside if t not in own and re.search(r"(?<!\w)" + re.escape(t) + r"(?!\w)", x.text)}
        for t in own:
            owners.setdefault(t, []).append(x)
    pick_terms(owners, kept, done, taken, add)
    return out


VOCAB = ["src/app/router.py", "lib/chat_live.ex", "created_at", "updated_at", "RuleID", "AshChat.Resources.Room",
         "/chat", "config/dev.exs", "a3f9c2b17d", "parse_body", "loadEmbedder", "v2.4.1", "tests/test_api.py",
         "user_id", "README.md", "deps/phoenix/lib/phoenix.ex", "max_tokens", "HTTPServer", "x1y2z3w4"]
WORDS = ["the", "a", "file", "then", "value", "returns", "line", "error", "ok", "and", "with"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) if rng.random() < 0.3 else rng.choice(WORDS) for _ in range(n)) + "\n"


def _key(found):
    return [(f.lost.memory_id, f.lost.turn, f.why, f.ref, f.whole) for f in found if f.why in ("path", "term")]


def test_the_index_finds_what_a_scan_of_every_lost_text_finds():
    rng = random.Random(18)
    for case in range(200):
        # every other conversation with its lost texts read into the prefilter at once
        index, memo = TermIndex(read_from=0 if case % 2 else autorecall.PREFILTER_FROM), Memos.new()
        lost: list[Lost] = []
        done: set[str] = set()
        for step in range(6):  # one conversation: lost texts come back on every request, a few new each time
            for _ in range(rng.randint(0, 4)):
                text = _text(rng, rng.randint(3, 40))
                if rng.random() < 0.05:  # a long text: a term in its middle is looked for as a word of it
                    text = "x " * (TERMS_CHARS // 2 + 10) + rng.choice(VOCAB) + " " + "y " * (TERMS_CHARS // 2 + 10)
                mid = memory_id(text)
                path = rng.choice(VOCAB[:3])
                lost.append(Lost(mid, text, rng.randint(0, 50), "Read", {"file_path": path}))
                if rng.random() < 0.1:  # the same text lost twice (the same output, two calls)
                    lost.append(Lost(mid, text, rng.randint(0, 50), "Read", {"file_path": path}))
            if rng.random() < 0.2 and lost:  # a text no longer lost (the client rewound)
                lost.pop(rng.randrange(len(lost)))
            content = [{"type": "text", "text": _text(rng, rng.randint(1, 8))}]
            if rng.random() < 0.3:  # a call on a path whose Read was cleared
                content.append({"type": "tool_use", "id": "t", "name": "Edit", "input": {"file_path": rng.choice(VOCAB[:4])}})
            answer = read_answer({"role": "assistant", "content": content})
            kept = Kept([{"role": "user", "content": _text(rng, rng.randint(0, 10))}])
            got = find(answer, lost, kept, done, memo=memo, index=index)
            want = scan_find(answer, lost, kept, done, memo=memo)
            assert _key(got) == _key(want), (case, step)
            done |= {f.lost.memory_id for f in got if rng.random() < 0.5}


def test_each_lost_text_is_read_once_at_most_and_only_if_it_holds_an_answers_term(monkeypatch):
    read = []
    real = autorecall.terms
    monkeypatch.setattr(autorecall, "terms", lambda text: read.append(text) or real(text))
    index = TermIndex()
    lost = [Lost(f"m-{i:016x}", f"output {i} of src/mod{i}.py and parse_body\n", i) for i in range(50)]
    for i in range(20):
        answer = read_answer({"role": "assistant", "content": f"see src/mod{i}.py"})
        got = find(answer, lost[: 30 + i], Kept([]), set(), index=index)
        assert [f.ref for f in got] == [f"src/mod{i}.py"]
    # each lost text read once at most, and only those that hold an answer's term (a substring test
    # rules the others out without reading their terms)
    outputs = [t for t in read if t.startswith("output ")]
    assert len(outputs) == len(set(outputs)) == 20
    assert sorted(outputs) == sorted(x.text for x in lost[:20])


def test_a_term_whose_newest_text_was_recalled_comes_back_from_the_next_and_then_as_an_excerpt():
    lost = [Lost(f"m-{i:016x}", f"edit {i}: The file docs/GLOSSARY.md has been updated\n", i, "Edit") for i in range(4)]
    answer = read_answer({"role": "assistant", "content": "Reading docs/GLOSSARY.md again"})
    newest = find(answer, lost, Kept([]), set())
    assert [(f.lost.memory_id, f.whole) for f in newest] == [("m-0000000000000003", False)]  # four hold it: an excerpt
    # the newest went into one request only: the next newest holds what the reference needs as well
    again = find(answer, lost, Kept([]), {"m-0000000000000003"})
    assert [f.lost.memory_id for f in again] == ["m-0000000000000002"]
    # all of them recalled once: the lines around the term in the newest, again
    every = find(answer, lost, Kept([]), {x.memory_id for x in lost})
    assert [(f.lost.memory_id, f.whole) for f in every] == [("m-0000000000000003", False)]
    # held by a message before the answer (an earlier answer that used it): nothing
    assert find(answer, lost, Kept([{"role": "assistant", "content": "see docs/GLOSSARY.md"}]), set()) == []


def test_the_lost_entries_of_a_request_are_made_once_and_only_the_latest_kept():
    index, made = TermIndex(), []

    def make(e):
        made.append(e["memory_id"])
        return Lost(e["memory_id"], e["text"], 0) if e.get("text") else None

    a, b, c = {"memory_id": "m-a", "text": "x"}, {"memory_id": "m-b", "text": ""}, {"memory_id": "m-c", "text": "z"}
    first = index.entries([a, b], make)
    second = index.entries([a, b, c], make)
    assert [x.memory_id for x in second] == ["m-a", "m-c"] and second[0] is first[0]
    assert made == ["m-a", "m-b", "m-c"]
    index.entries([c], make)
    index.entries([a], make)  # a was let go: made again
    assert made == ["m-a", "m-b", "m-c", "m-a"]
