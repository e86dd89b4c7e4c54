"""Retrieval pieces with real parts: BM25, history exclusion, fusion, a real Chroma store and the real
model, budget cuts, and cache-safe injection checked by the real validator."""

from __future__ import annotations

import copy
import re
import sys
import threading
import time
from dataclasses import replace
from unicodedata import category

import pytest

from contextwarden.memory.asides import Asides, Pieces
from contextwarden.memory.ids import memory_id
from contextwarden.memory.ingest import items_from_messages
from contextwarden.memory.inject import (
    OPEN,
    closing_tag,
    render_block,
    render_item,
    strip_blocks,
)
from contextwarden.memory.lexical import LexicalIndex
from contextwarden.memory.related import RelatedWords
from contextwarden.memory.retrieve import (
    _BULLET,
    HistoryIndex,
    Hit,
    Query,
    Retrieval,
    Retriever,
    _line_key,
    agreed,
    build_query,
    history_texts,
    normalise,
    rrf,
    select,
)
from contextwarden.memory.tagger import tag_key
from contextwarden.memory.words import tokenize
from contextwarden.models import ApiKind
from contextwarden.settings.memory import MemorySection
from contextwarden.wire.dialects import ANTHROPIC, OPENAI_CHAT, NotInjectable, dialect, validate_rewrite
from tests.support.memstore import embedder, item, store

_WS = re.compile(r"\s+")
FACTS = [
    "The staging database password rotation runs every Monday at 04:00 via cron.",
    "def parse_invoice(path): reads billing/invoices.py records and returns Invoice objects",
    "My sister Clara moved to Lisbon last year and works as an architect.",
    "We adopted a beagle named Biscuit from the shelter in April.",
    "The flaky test is tests/test_payments.py::test_refund_timeout; it fails when Redis is slow.",
    "Grandma's lasagna recipe uses ricotta, nutmeg and fresh basil.",
]


# --- lexical ------------------------------------------------------------------------------------------
def test_tokenize_keeps_identifiers_whole_and_split_and_stems_words():
    toks = tokenize("parse_invoice() in billing/invoices.py; MemoryStore researching agencies")
    assert {"parse_invoice", "parse", "invoice", "billing/invoices.py", "memorystore", "memory", "store",
            "research", "agency"} <= set(toks)
    assert "in" not in toks


def test_bm25_ranks_exact_identifier_first_and_grows_incrementally():
    idx = LexicalIndex()
    idx.add([item(t, turn=i) for i, t in enumerate(FACTS[:3])])
    assert idx.query("parse_invoice", ["t-a"], n=3)[0].item.text == FACTS[1]
    assert idx.add([item(FACTS[1], turn=1)]) == 0  # the same id is indexed once
    idx.add([item(t, turn=i + 3) for i, t in enumerate(FACTS[3:])])
    assert len(idx) == len(FACTS)
    hits = idx.query("which test is flaky because of redis", ["t-a"], n=2)
    assert hits[0].item.text == FACTS[4]


def test_bm25_partitions_by_tenant_and_matches_typos():
    idx = LexicalIndex()
    idx.add([item(FACTS[3], tenant="t-a"), item(FACTS[5], tenant="t-b")])
    assert [h.item.tenant for h in idx.query("beagle lasagna", ["t-a"])] == ["t-a"]
    assert [h.item.tenant for h in idx.query("beagle lasagna", ["t-b"])] == ["t-b"]
    assert idx.query("lasagne recipee", ["t-b"])[0].item.text == FACTS[5]  # fuzzy: lasagne -> lasagna


def test_prune_common_drops_words_most_items_contain():
    idx = LexicalIndex()
    idx.add([item(f"Caroline: message number {i} about topic{i}", turn=i) for i in range(60)])
    assert idx.prune_common("What did Caroline say about topic7?", ["t-a"], 0.2) == "What did say about topic7?"
    small = LexicalIndex()
    small.add([item("Caroline: hello", turn=0)])
    assert small.prune_common("Caroline topic", ["t-a"], 0.2) == "Caroline topic"  # too few items to judge


# --- history exclusion ------------------------------------------------------------------------------------
def test_history_index_recognises_messages_and_chunks_still_in_the_request():
    long_output = "\n".join(f"line {i}: some log output that is long enough to count" for i in range(40))
    hist = HistoryIndex(["Hello   there,\nhow are you?", long_output])
    assert item("Hello there, how are you?") in hist  # whitespace-normalised
    chunk = "\n".join(long_output.splitlines()[10:20])
    assert item(chunk) in hist
    assert item("line 3: something else entirely that was never in the request") not in hist
    assert item(FACTS[0]) not in hist


def test_an_index_with_more_texts_is_the_index_of_all_of_them_and_the_first_stays_as_it_was():
    """(a conversation's index is carried from search to search and extended with its new messages)"""
    long_output = "\n".join(f"line {i}: some log output that is long enough to count" for i in range(40))
    first = HistoryIndex(["Hello   there,\nhow are you?"])
    both = first.with_texts([long_output])
    assert both.keys is first.keys  # (the texts' keys remembered where the first remembers them)
    whole = HistoryIndex(["Hello   there,\nhow are you?", long_output])
    assert (both.hashes, both.lines, both.sources) == (whole.hashes, whole.lines, whole.sources)
    assert item("\n".join(long_output.splitlines()[10:20])) in both
    assert item("\n".join(long_output.splitlines()[10:20])) not in first and item("Hello there, how are you?") in first


def test_a_chunk_of_an_agents_tool_call_is_in_the_history_that_still_holds_the_call():
    """Claude Code's turn (thinking, text, a long Write) is stored as its text and tool call, cut into
    chunks whose lines are pieces of one JSON line: each is known by the message it was cut from."""
    body = "\n".join(f"    def handler_{i}(self): return {i}" for i in range(60))
    msg = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me write the module.", "signature": "sig"},
        {"type": "text", "text": "Writing the handlers."},
        {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {"file_path": "/src/h.py", "content": body}}]}
    [stored] = items_from_messages([msg], ApiKind.ANTHROPIC, "s1", "t-a", 0)
    chunk = replace(item(stored.text[400:900], role="assistant"), source_id=memory_id(stored.text))
    assert chunk in HistoryIndex(history_texts(ApiKind.ANTHROPIC, {"messages": [msg]}))
    assert chunk not in HistoryIndex(history_texts(ApiKind.ANTHROPIC, {"messages": [{"role": "user", "content": "hi"}]}))


def test_line_keys_are_the_regex_normalisation_for_every_whitespace_and_bullet():
    # normalise and _line_key use str.split (a third of the regex's time): the keys must be the ones the
    # regex gave, for every code point between words, at the ends, and before a bullet
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    # str.split's whitespace is the regex's \s, code point by code point (what makes the two agree) ...
    assert [c for c in every if c.isspace()] == re.findall(r"\s", every)
    # ... and the forms, on every code point that could be told apart: all below U+3100 (every whitespace
    # among them), every space, separator, control, format or digit of any plane, and every 61st of the rest
    cases = {c for c in every if c < "\u3100" or c.isspace() or c.isnumeric()
             or (category(c)[0] in "ZC" and category(c) not in ("Co", "Cn"))}
    cs = sorted(cases | set(every[::61]))
    for form in ("a{}b", "{0}x{0}", "-{}item", "3){}step"):
        texts = [form.format(c) for c in cs]
        want = [_WS.sub(" ", s).strip() for s in texts]
        want_keys = [_BULLET.sub("", w) for w in want]
        got, keys = list(map(normalise, texts)), list(map(_line_key, texts))
        if got != want or keys != want_keys:
            bad = next(i for i, s in enumerate(texts) if got[i] != want[i] or keys[i] != want_keys[i])
            raise AssertionError((hex(ord(cs[bad])), texts[bad], got[bad], want[bad], keys[bad], want_keys[bad]))
    for s in ("- a bullet line that is long", "• dot", "12. numbered", ">> quoted", "*", "7", "plain line"):
        assert _line_key(s) == _BULLET.sub("", _WS.sub(" ", s).strip())


def test_rrf_fuses_by_rank_and_weight():
    fused = rrf([(["a", "b", "c"], 1.0), (["c", "a"], 1.0)], k=10)
    assert max(fused, key=fused.get) == "a"
    assert fused["c"] > fused["b"]
    assert rrf([(["x"], 2.0)], k=10)["x"] == pytest.approx(2.0 / 11)


def test_a_hit_is_agreed_in_both_top_fives_with_a_word_of_the_question_most_items_lack():
    def hit(text, vr, sim, lr):
        return Hit(item(text), vector=sim, vector_rank=vr, lexical=1.0 if lr else None, lexical_rank=lr)

    religious = hit("Caroline: the church choir and my faith mean a lot to me", 2, 0.18, 3)
    ret = Retrieval(hits=[hit("Caroline: thanks, see you", 1, 0.2, None), religious],
                    vector_query="Would be considered religious faith?")  # (the question less "Caroline")
    assert agreed(ret, "Would Caroline be considered religious faith?") == (religious, "faith")
    for other in (hit(religious.item.text, 6, 0.18, 3), hit(religious.item.text, 2, 0.05, 3),  # too deep, too far
                  hit(religious.item.text, 2, 0.18, 6), hit(religious.item.text, 2, 0.18, None)):  # by words: too deep, not
        assert agreed(Retrieval(hits=[other], vector_query=ret.vector_query), "") is None
    # only the words most items lack: "Caroline" is left out of the vector query, so her name alone agrees on nothing
    named = Retrieval(hits=[hit("Caroline: hello there", 1, 0.2, 1)], vector_query="What does do?")
    assert agreed(named, "What does Caroline do?") is None and agreed(Retrieval(hits=named.hits), "thanks!") is None


# --- hybrid search over a real store ---------------------------------------------------------------------
@pytest.fixture
def mem(tmp_path):
    st = store(tmp_path)
    items = [item(t, turn=i, tenant="t-a", session="s1") for i, t in enumerate(FACTS)]
    items += [item("Tenant B's secret plan: the Lisbon office opens in May.", tenant="t-b", session="s9", turn=0)]
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    yield st, lex
    st.close()


def test_hybrid_search_finds_by_meaning_and_by_identifier(mem):
    st, lex = mem
    cfg = MemorySection(neighbour_weight=0)
    r = Retriever(st, lex, embedder(), None, cfg)
    ret = r.search(Query("what kind of dog do we have?"), ["t-a"])
    assert ret.mode == "hybrid" and ret.hits[0].item.text == FACTS[3]
    assert ret.hits[0].vector is not None
    ret = r.search(Query("where is parse_invoice defined"), ["t-a"])
    top = ret.hits[0]
    assert top.item.text == FACTS[1] and top.lexical_rank == 1 and top.vector_rank is not None
    assert top.fused == pytest.approx(cfg.vector_weight / (cfg.rrf_k + top.vector_rank)
                                      + cfg.lexical_weight / (cfg.rrf_k + top.lexical_rank))


def test_search_never_crosses_tenants(mem):
    st, lex = mem
    r = Retriever(st, lex, embedder(), None, MemorySection(neighbour_weight=1.0))
    for q in ["Lisbon office opening", "secret plan", "sister in Lisbon", "Tenant B"]:
        assert {h.item.tenant for h in r.search(Query(q), ["t-a"]).hits} <= {"t-a"}
        assert {h.item.tenant for h in r.search(Query(q), ["t-b"]).hits} <= {"t-b"}


def test_search_skips_items_still_in_the_history(mem):
    st, lex = mem
    r = Retriever(st, lex, embedder(), None, MemorySection())
    hist = HistoryIndex([FACTS[3]])
    ret = r.search(Query("what kind of dog do we have?"), ["t-a"], exclude=hist.__contains__)
    assert FACTS[3] not in [h.item.text for h in ret.hits]
    assert ret.in_history >= 1


def test_lexical_only_without_a_model(mem):
    st, lex = mem
    ret = Retriever(st, lex, None, None, MemorySection()).search(Query("beagle Biscuit shelter"), ["t-a"])
    assert ret.mode == "lexical" and ret.hits[0].item.text == FACTS[3] and ret.hits[0].vector is None


def test_vector_query_past_the_deadline_raises_timeout(mem):
    from concurrent.futures import ThreadPoolExecutor

    st, lex = mem
    real = st.vector_query

    gate, answered = threading.Event(), threading.Event()

    def slow(*a, **kw):  # the real query, on a Chroma that answers late: only after the search gave up
        gate.wait(60)
        answered.set()
        return real(*a, **kw)

    st.vector_query = slow
    with ThreadPoolExecutor(1) as pool:
        r = Retriever(st, lex, embedder(), pool, MemorySection())
        try:
            with pytest.raises(TimeoutError):
                r.search(Query("dog"), ["t-a"], timeout_s=0.05)
            assert not answered.is_set()  # it gave up at its deadline, not when the query answered
        finally:
            gate.set()



class _SlowCore:
    """The real model on a slow core: each text takes ``per_text`` seconds more."""

    def __init__(self, per_text: float) -> None:
        self.per_text = per_text

    def __call__(self, texts: list[str]):
        time.sleep(self.per_text * len(texts))
        return embedder()(texts)


def test_candidates_not_yet_embedded_are_judged_only_until_the_deadline(tmp_path):
    """When no candidate has a vector yet (stored too recently for the idle embedder), the search embeds the
    first few for the relevance floor, one at a time, each waited for only until its deadline: on a slow core it
    judges fewer and still answers in time (a late answer is no memory at all)."""
    from concurrent.futures import ThreadPoolExecutor

    st = store(tmp_path / "s")  # no vectors: the fresh items are indexed by their words only
    lex = LexicalIndex()
    lex.add([item(f"The beagle Biscuit {k} came from the shelter on Elm street.", session="s-new", turn=k) for k in range(5)])
    q = Query("beagle Biscuit shelter")
    with ThreadPoolExecutor(2) as pool:
        roomy = Retriever(st, lex, _SlowCore(0.0), pool, MemorySection(neighbour_weight=0)).search(q, ["t-a"], timeout_s=30)
        assert [h.vector is not None for h in roomy.hits] == [True] * 3 + [False] * 2
        assert "unembedded_late" not in roomy.timings
        slow = Retriever(st, lex, _SlowCore(0.3), pool, MemorySection(neighbour_weight=0)).search(q, ["t-a"], timeout_s=1.0)
        judged = sum(h.vector is not None for h in slow.hits)
        # (the query 0.3 s, then 0.3 s a candidate: the third would end past the deadline)
        assert 1 <= judged < 3 and slow.timings["unembedded_late"] == 1 and slow.ms < 1100
    st.close()

# --- budget ---------------------------------------------------------------------------------------------
def _ret(texts, tags=None):
    return Retrieval(hits=[Hit(item(t, turn=i, tags=(tags or {}).get(i, [])), fused=1.0 / (i + 1))
                           for i, t in enumerate(texts)])


def test_select_respects_budget_and_top_k_and_passes_over_what_does_not_fit():
    count = lambda s: len(s.split())
    texts = ["short one", "a much longer text " * 20, "short two", "short three"]
    chosen = select(_ret(texts), budget=20, top_k=10, cost=lambda it: count(render_item(it)))
    assert [h.item.text for h in chosen] == ["short one", "short two", "short three"]
    assert sum(h.tokens for h in chosen) <= 20
    assert len(select(_ret(texts), budget=1000, top_k=2, cost=lambda it: count(render_item(it)))) == 2


def test_select_skips_items_only_about_active_topics():
    ret = _ret(["Postgres orders table lock", "Lisbon trip plans"], tags={0: ["postgres", "orders table"], 1: ["lisbon", "trip"]})
    chosen = select(ret, budget=1000, top_k=5, cost=lambda it: len(render_item(it)),
                    active_tags={tag_key("Postgres"), tag_key("orders table"), tag_key("deploy")})
    assert [h.item.text for h in chosen] == ["Lisbon trip plans"]
    assert ret.active == 1


# --- injection ------------------------------------------------------------------------------------------
def _anthropic(messages, **kw):
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": [{"type": "text", "text": "sys",
            "cache_control": {"type": "ephemeral"}}], "messages": messages, **kw}


BLOCK = render_block([item(FACTS[3], turn=7, session="s-old")])


def _apply(api, body):
    original = copy.deepcopy(body)
    model = dialect(api).parse(body)
    where = dialect(api).inject(model, BLOCK)
    wire = model.wire()
    assert body == original, "the original body must not be mutated"
    assert validate_rewrite(api, wire, original) == []
    return wire, where


def test_anthropic_string_content_becomes_text_plus_memory_block():
    wire, where = _apply(ApiKind.ANTHROPIC, _anthropic([{"role": "user", "content": "What dog do we have?"}]))
    content = wire["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What dog do we have?"}
    assert content[-1]["text"] == BLOCK and content[-1]["text"].startswith(OPEN) and content[-1]["text"].endswith(closing_tag(BLOCK))
    assert wire["system"] == _anthropic([])["system"]
    assert "session s-old" in BLOCK and "#7 user | " in BLOCK


def test_anthropic_block_goes_after_the_last_cache_breakpoint():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "file text"},
                                          {"type": "text", "text": "and now?", "cache_control": {"type": "ephemeral"}}]}]
    wire, _ = _apply(ApiKind.ANTHROPIC, _anthropic(msgs))
    last = wire["messages"][-1]["content"]
    assert last[:2] == msgs[2]["content"]  # tool_result first, breakpoint block unchanged
    assert last[2]["text"] == BLOCK and "cache_control" not in last[2]


def test_anthropic_no_injection_before_a_later_breakpoint():
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "prefill", "cache_control": {"type": "ephemeral"}}]}]
    with pytest.raises(NotInjectable):
        ANTHROPIC.inject(ANTHROPIC.parse(_anthropic(msgs)), BLOCK)


@pytest.mark.parametrize("api", [ApiKind.OPENAI_CHAT, ApiKind.OLLAMA_CHAT])
def test_openai_chat_appends_to_the_last_user_message(api):
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "What dog?"}]}
    wire, _ = _apply(api, body)
    assert wire["messages"][0] == body["messages"][0]
    assert wire["messages"][-1]["content"].startswith("What dog?\n\n" + OPEN)
    parts = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "What dog?"}]}]}
    wire, _ = _apply(ApiKind.OPENAI_CHAT, parts)
    assert wire["messages"][-1]["content"][-1] == {"type": "text", "text": BLOCK}


def test_openai_chat_tool_loop_is_not_injected():
    body = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "file"}]}
    with pytest.raises(NotInjectable):
        OPENAI_CHAT.inject(OPENAI_CHAT.parse(body), BLOCK)


def test_responses_string_and_list_inputs():
    wire, _ = _apply(ApiKind.OPENAI_RESPONSES, {"model": "gpt-5", "input": "What dog?"})
    assert wire["input"].startswith("What dog?\n\n" + OPEN)
    body = {"model": "gpt-5", "instructions": "be brief",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What dog?"}]}]}
    wire, _ = _apply(ApiKind.OPENAI_RESPONSES, body)
    assert wire["input"][-1]["content"][-1] == {"type": "input_text", "text": BLOCK}
    assert wire["instructions"] == "be brief"


def test_strip_blocks_removes_an_echoed_memory_block():
    assert strip_blocks("question\n\n" + BLOCK + "\nafter") == "question\nafter"


def test_build_query_uses_last_user_text_and_context():
    msgs = [{"role": "user", "content": "Set up the Lisbon trip."},
            {"role": "assistant", "content": "Which dates?"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "ignored"},
                                         {"type": "text", "text": "May 3 to 9"}]}]
    q, idx = build_query(ApiKind.ANTHROPIC, msgs)
    assert idx == 2 and q.text == "May 3 to 9" and "Which dates?" in q.context and "Lisbon" in q.context
    only_results = msgs[:2] + [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "out"}]}]
    q, idx = build_query(ApiKind.ANTHROPIC, only_results)
    assert idx == 0 and q.text == "Set up the Lisbon trip."


# --- contextwarden search --------------------------------------------------------------------------------
def test_search_cli_shows_sources_and_scores(tmp_path, capsys):
    import orjson

    from contextwarden.cli import main as cli_main
    from contextwarden.offline.memory.replay import Replayer

    home = tmp_path / "home"
    rp = Replayer.from_profile("claude-code", home)
    try:
        msgs = []
        for i, fact in enumerate(FACTS):
            msgs.append({"role": "user", "content": fact})
            sent = rp.send(msgs, api_key="sk-one", session="sess-1")
            rp.complete(sent, f"Noted {i}.")
            msgs.append({"role": "assistant", "content": f"Noted {i}."})
        assert rp.flush()
    finally:
        rp.close()
    assert cli_main(["search", "which dog did we adopt", "--home", str(home), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "hybrid" in out and FACTS[3] in out.split("\n 2.")[0]  # the best hit is the beagle
    assert "fused" in out and "vector" in out and "lexical" in out and "session sess-1" in out and "message #6" in out
    assert cli_main(["search", "parse_invoice", "--home", str(home), "--json", "--limit", "2"]) == 0
    rows = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["text"] == FACTS[1] and rows[0]["lexical_rank"] == 1 and rows[0]["session"] == "sess-1"
    assert cli_main(["search", "beagle", "--home", str(home), "--session", "other"]) == 0
    assert "memory is empty for session other" in capsys.readouterr().out
    assert cli_main(["search", "beagle", "--home", str(home), "--api-key", "sk-two"]) == 0
    assert "memory is empty" in capsys.readouterr().out  # another key's tenant holds nothing


def test_a_question_naming_one_speaker_follows_that_speakers_turns(tmp_path):
    """The camping turn is Melanie's answer to "what trips has Melanie taken?", but Caroline's turns
    about her own trips fill the conversation's top: the ranking within Melanie's turns finds it."""
    said = [("Caroline", f"Melanie, you asked about my trips: my trip to {city} was {how}.")
            for city in ("Paris", "Rome", "Berlin", "Oslo", "Madrid", "Vienna", "Prague", "Lisbon", "Dublin", "Athens")
            for how in ("lovely", "a holiday")]
    said += [("Includes", "a header made of a stopword names no one")]  # (a speaker found in every question)
    said += [("Melanie", "Thanks Caroline! I'm fine, busy week."),
            ("Melanie", "We went camping by the lake with the kids last weekend.")]
    items = [item(f"{who}: {text}", turn=i, speaker=who) for i, (who, text) in enumerate(said)]
    found = hits_by_setting(tmp_path, items, "What trips has Melanie taken?", 2,
                            {w: MemorySection(neighbour_weight=0, speaker_weight=w) for w in (0.0, 2.0)})
    assert items[-1].text not in found[0.0]
    assert items[-1].text in found[2.0]


def test_a_named_speakers_turns_are_matched_word_piece_by_word_piece(tmp_path):
    """Melanie tells how she destresses at the end of a turn about her long day: its pooled vector is the
    day's, below her ten turns about stress. Matched piece by piece (``memory.asides.Pieces``: each of the
    question's word pieces against the turn's best) it reaches her top 3. Only speaker turns are learnt."""
    said = [f"Melanie: {t}" for t in (
        "Work stress has been the theme of the whole week at the office.",
        "Everyone I know seems so stressed these days, it is a lot to take.",
        "My boss keeps adding deadlines and the stress is piling up.",
        "Stress at home and stress at work, what a combination this month.",
        "I read an article about stress and how it affects sleep.",
        "The doctor said my stress levels are too high again.",
        "Do you ever feel like stress just follows you around?",
        "The traffic on the way to work stresses me out every day.",
        "Moving house is one of the most stressful things I have done.",
        "Exams week was always the most stressful time for me.",
        "Long day! The kids had swimming, I fixed the fence, cooked dinner for six, and then I painted for an "
        "hour to destress before bed.")]
    items = [item(text, turn=i, speaker="Melanie") for i, text in enumerate(said)]
    items.append(item("Melanie: and the school fair raised enough money for new library books and a bigger playground.",
                      turn=len(said), speaker="Melanie", kind="chunk"))  # (a long turn is stored in chunks)
    items.append(item("A note without a speaker about how to destress.", turn=len(said) + 1, role="assistant"))
    learnt, found = found_with_and_without(tmp_path, items, Pieces, "What does Melanie do to destress?",
                                           MemorySection(neighbour_weight=0, lexical_weight=0, speaker_weight=2.0))
    assert learnt == {it.id for it in items[:-1]}
    answer = items[len(said) - 1].text  # the long day's turn
    assert answer not in found["without"]
    assert answer in found["with"]


def found_with_and_without(tmp_path, items, kind, question: str, section: MemorySection) -> tuple[set[str], dict]:
    """The ids of the turns ``kind`` (:class:`Asides` or :class:`Pieces`) learnt of ``items``, and the top 3 of
    what ``question`` finds without and with it."""
    st = store(tmp_path)
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    parts = kind(embedder())
    parts.learn(lex, items)
    part = lex.partition_of(items[0])
    learnt = set(parts.best(part, "s1", embedder()(["a question"])[0]) if kind is Asides
                 else parts.scores(part, "s1", "a question"))
    arg = "asides" if kind is Asides else "pieces"
    try:
        return learnt, {k: [h.item.text for h in Retriever(st, lex, embedder(), None, section, **{arg: p}).search(
                            Query(question), ["t-a"], n=3, session="s1").hits[:3]]
                        for k, p in (("without", None), ("with", parts))}
    finally:
        st.close()


def hits_by_setting(tmp_path, items, question: str, n: int, sections: dict) -> dict:
    """The texts ``question`` finds among ``items`` (in one store and lexical index) under each of
    ``sections``' settings, by key."""
    st = store(tmp_path)
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    try:
        return {k: [h.item.text for h in Retriever(st, lex, embedder(), None, sec).search(
                    Query(question), ["t-a"], n=n, session="s1").hits] for k, sec in sections.items()}
    finally:
        st.close()


def test_a_question_naming_a_day_follows_the_turns_dated_that_day(tmp_path):
    """A chat export's turns carry their dates (``when``); "what did Maria do on 16 June, 2023?" finds
    the turn dated that day, below the conversation's top of turns about doing things on other days."""
    said = [(f"{d} {m}, 2023", f"Maria: On this lovely day I did something fun: I went to the {place}.")
            for d, m in [("2", "May"), ("9", "May"), ("3", "April"), ("20", "March")]
            for place in ("market", "museum", "cinema")]
    said += [("1:10 pm on 16 June, 2023", "Maria: Quiet afternoon here, baking bread with my neighbour.")]
    items = [item(text, turn=i, speaker="Maria", when=when) for i, (when, text) in enumerate(said)]
    found = hits_by_setting(tmp_path, items, "What fun thing did Maria do on 16 June, 2023?", 2,
                            {w: MemorySection(neighbour_weight=0, speaker_weight=0, date_weight=w) for w in (0.0, 1.0)})
    assert items[-1].text not in found[0.0]
    assert items[-1].text in found[1.0]


def test_a_question_about_the_one_asking_follows_their_own_turns(tmp_path):
    """In a chat with an assistant (no speaker headers), "which store did I spend the most at?" is answered
    by what the person told in passing, not by the assistant's long advice on the same words."""
    said = [("assistant", f"To spend less money at the grocery store, {tip}. Which store is cheapest depends on the week.")
            for tip in ("compare unit prices", "plan meals first", "buy store brands", "use coupons", "shop the sales",
                        "avoid shopping hungry", "buy in bulk", "check receipts", "keep a price book", "shop seasonally")]
    said += [("user", "Can you suggest recipes with chicken? By the way, I ordered from Thrive Market and paid $150."),
             ("user", "Thanks, that helps with the week.")]
    items = [item(text, turn=i, role=role) for i, (role, text) in enumerate(said)]
    found = hits_by_setting(tmp_path, items, "Which grocery store did I spend the most money at?", 3,
                            {w: MemorySection(neighbour_weight=0, speaker_weight=w) for w in (0.0, 2.0)})
    assert items[-2].text not in found[0.0][:3]
    assert items[-2].text in found[2.0][:3]


def test_a_question_about_the_one_asking_finds_what_they_said_in_passing(tmp_path):
    """The person's turn asks for slide templates and tells their tenure in passing: its vector is the
    request's, below their other "how long should I ..." turns. Ranked by its best sentence (memory.asides)
    it is found; only the person's turns of several sentences are learnt."""
    said = [("user", f"How long should I {task}? I have been wondering about it for a while.")
            for task in ("rest between sets in my current workout", "wait before repotting my plants",
                         "keep leftovers in my fridge", "charge my new phone battery", "study for my driving test",
                         "let my bread dough rise", "steep my green tea", "run my dishwasher")]
    said += [("assistant", f"For {t}, keep it simple: one idea a slide. Use large type and consistent colours.")
             for t in ("layouts", "fonts", "charts", "colours")]
    said += [("user", "I'm preparing a presentation for an upcoming conference and need help designing the slides. Do you "
                      "have any templates? By the way, I started as a coordinator and got promoted to senior specialist "
                      "after 2 years and 4 months."),
             ("user", "Thanks, that helps.")]
    items = [item(text, turn=i, role=role) for i, (role, text) in enumerate(said)]
    learnt, found = found_with_and_without(tmp_path, items, Asides, "How long have I been in my current position?",
                                           MemorySection(neighbour_weight=0))
    assert learnt == {it.id for it in items[:8]} | {items[-2].id}
    assert items[-2].text not in found["without"]
    assert items[-2].text in found["with"]


def test_a_session_without_speakers_or_a_named_day_reads_no_session_vectors(mem):
    """An agent's session (no ``Name:`` turns) asked without a date: the focus rankings have nothing to
    look for, so the session's vectors are not read from the store on the request path."""
    st, lex = mem
    r = Retriever(st, lex, embedder(), None, MemorySection())
    assert r.search(Query("what kind of dog do we have?"), ["t-a"], session="s1").hits
    assert r.scope is None
    r.search(Query("what did we do on 2 May, 2023?"), ["t-a"], session="s1")
    assert r.scope is not None


def test_a_question_naming_a_category_finds_the_turn_naming_a_member(tmp_path):
    """"What instruments does Maria play?" shares no word with "I practised the violin for hours": the
    session's words nearest the question's by embedding ("violin" near "instruments") make it a candidate."""
    st = store(tmp_path)
    said = [f"Maria: I went to the {place} with my {who} and we talked about {topic}."
            for place in ("market", "museum", "cinema", "park") for who in ("sister", "neighbour", "friend")
            for topic in ("the weather", "the songs Maria plays at weekends")]
    said += ["Maria: I practised the violin for hours yesterday."]
    items = [item(text, turn=i, speaker="Maria") for i, text in enumerate(said)]
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    related = RelatedWords(embedder())
    related.learn(lex, items)
    found = {}
    for weight in (0.0, 0.3):
        r = Retriever(st, lex, embedder(), None, MemorySection(neighbour_weight=0, speaker_weight=0, related_weight=weight),
                      related=related)
        found[weight] = [h.item.text for h in r.search(Query("What instruments does Maria play?"), ["t-a"], n=10,
                                                        session="s1").hits]
    assert items[-1].text not in found[0.0]  # not a candidate: no shared word, its vector below the top 10
    assert items[-1].text in found[0.3]
    assert related.expand("t-a", "s1", "What instruments does Maria play?")["violin"] >= 0.5
    assert related.expand("t-a", "s2", "What instruments does Maria play?") == {}  # a session it never learnt
    st.close()
