"""Memory stores the same turns whatever the client's framing (memory/turns.py): one message per turn,
consecutive turns merged into one message, each turn written after its date. Through the real pipeline
(Replayer, real Chroma and model) on the first session of a LoCoMo conversation."""

from __future__ import annotations

from datetime import date

import orjson

from contextwarden.memory.inject import render_block
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.retrieve import HistoryIndex, build_query
from contextwarden.memory.turns import dates_in, near, spans_in, units
from contextwarden.models import ApiKind
from contextwarden.offline.memory import eval_locomo as ev
from tests.conftest import EVAL_DIR
from tests.plugins.test_memory import replayer


def sessions(*n: int) -> dict:
    """Sessions ``n`` of a LoCoMo conversation (2 and 3: the speaker who ends 2 starts 3, so merging joins
    their turns into one message)."""
    sample = next(s for s in orjson.loads((EVAL_DIR / "locomo_dev.json").read_bytes()) if s["sample_id"] == "conv-30")
    c = sample["conversation"]
    return {k: c[k] for k in ("speaker_a", "speaker_b", *(f"session_{i}{d}" for i in n for d in ("", "_date_time")))}


def stored(rp, conv: dict, framing: str, key: str) -> list:
    msgs, _ = ev.framed(conv, framing)
    sent = None
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and i:
            sent = rp.send(msgs[:i], api_key=key, session=framing)
            rp.complete(sent, m["content"])
    assert rp.flush()
    return list(rp.memory().store.iter_items([sent.ctx.tenant]))


def test_dated_and_merged_framings_store_the_turns_one_message_per_turn_stores_with_its_neighbours(tmp_path):
    conv = sessions(2, 3)
    rp = replayer(tmp_path, window=200_000)
    try:
        plain = stored(rp, conv, "turns", "sk-turns")
        dated = stored(rp, conv, "dated-merged", "sk-dated")
        # each turn's neighbours (the turns a hit brings in with it) are the turn said before and the one after,
        # not every turn of the messages around it
        around = {name: {it.text: sorted(n.text for n in rp.memory().neighbours(it)) for it in items}
                  for name, items in (("turns", plain), ("dated-merged", dated))}
    finally:
        rp.close()
    assert around["dated-merged"] == around["turns"]
    assert all(len(texts) <= 2 for texts in around["turns"].values())
    dates = {conv[f"session_{i}_date_time"] for i in (2, 3)}
    assert sorted(it.text for it in dated) == sorted(it.text for it in plain)  # the same units, same ids
    assert {it.hash for it in dated} == {it.hash for it in plain}
    assert not any(d in it.text for it in dated for d in dates)  # the date is not in what is embedded and indexed
    assert {it.when for it in dated} == dates and {it.when for it in plain} == {None}
    speakers = {conv["speaker_a"], conv["speaker_b"]}
    assert {it.speaker for it in dated} == {it.speaker for it in plain} == speakers


def test_a_dated_merged_message_of_the_history_holds_the_turns_cut_from_it():
    text = "(1:10 pm on 27 March, 2023) Audrey: We adopted a puppy.\n(1:10 pm on 27 March, 2023) Audrey: His name is Pixie."
    got = units(text)
    assert [u.text for u in got] == ["Audrey: We adopted a puppy.", "Audrey: His name is Pixie."]
    index = HistoryIndex([text])
    assert all(u.text in index for u in got)  # not injected again while the history still holds them
    assert "Audrey: We adopted a kitten." not in index


def test_a_dated_question_is_searched_without_its_date():
    q, _ = build_query(ApiKind.ANTHROPIC, [{"role": "user", "content": "[2023-03-27 13:10] Audrey: what is my dog called?"}])
    assert q.text == "Audrey: what is my dog called?"


def test_a_message_is_cut_only_where_it_reads_as_a_transcript():
    assert len(units("Summary: the tests pass.\nNext: release notes.")) == 1  # two headers, no date, no repeat
    assert len(units("(see above) Note: nothing here")) == 1 and units("(see above) Note: x")[0].when is None
    assert [u.speaker for u in units("Ann: hi\nBo: hello\nAnn: bye")] == ["Ann", "Bo", "Ann"]
    assert units("27/03/2023, 13:10 - Mary: on my way")[0].when == "27/03/2023, 13:10"
    assert units("just a sentence: with a colon")[0].speaker is None


def test_days_named_in_a_question_and_in_a_turns_date():
    assert dates_in("What did Maria share on 16 June, 2023?") == [date(2023, 6, 16)]
    assert dates_in("(1:10 pm on 27 March, 2023)") == [date(2023, 3, 27)]
    assert dates_in("May 23rd, 2023 or 2023-03-07") == [date(2023, 5, 23), date(2023, 3, 7)]
    assert dates_in("on 3 June") == [] and dates_in("31 February, 2023") == []  # no year; no such day
    day = [(date(2023, 3, 30), date(2023, 3, 30))]
    assert near("1:10 pm on 27 March, 2023", day, 7)
    assert not near("1:10 pm on 27 March, 2023", [(date(2023, 5, 30),) * 2], 7) and not near(None, day, 7)


def test_a_month_named_with_its_year_is_a_span_of_days():
    """"What did Maria donate in December 2023?" reads the turns dated in that month (and up to the slack
    after it: a chat tells what happened last month); a day's own month is not named again."""
    assert spans_in("What did Maria donate in December 2023?") == [(date(2023, 12, 1), date(2023, 12, 31))]
    assert spans_in("on 16 June, 2023") == [(date(2023, 6, 16),) * 2]
    assert spans_in("camping in June?") == []  # no year
    dec = spans_in("in December 2023")
    assert near("1:10 pm on 15 December, 2023", dec, 7) and near("1:10 pm on 4 January, 2024", dec, 7)
    assert not near("1:10 pm on 12 January, 2024", dec, 7) and not near("1:10 pm on 20 November, 2023", dec, 7)


def test_the_block_heads_a_dated_turn_with_its_day_not_its_clock_time():
    """Turns said on one day share one heading, whatever time each session started: a dated framing spends
    its budget on excerpts as an undated one does (the clock time cost ~6 tokens a heading)."""
    def item(turn: int, when: str) -> MemoryItem:
        return MemoryItem(text=f"turn {turn}", session="s1", tenant="t", turn=turn, role="user", kind="message", when=when)
    block = render_block([item(1, "1:56 pm on 8 May, 2023"), item(2, "7:10 pm on 8 May, 2023"),
                          item(3, "2023-05-25 13:10")], nonce="0" * 12)
    headings = [line for line in block.splitlines() if line.startswith("## ")]
    assert headings == ["## session s1 · said 8 May, 2023", "## said 2023-05-25"]
