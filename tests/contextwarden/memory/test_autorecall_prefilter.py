"""Auto-recall's prefilter never rules out a text that holds a string as a substring, rules out most that
do not, and stays bounded; the texts TermIndex.unread yields are those a substring test of each finds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contextwarden.memory.autorecall import Lost, TermIndex
from contextwarden.memory.prefilter import Prefilter

# letters, digits and "_", ASCII separators, and characters outside ASCII: letters, a no-break space,
# a line separator (split() cuts there), an emoji
ALPHABET = "abcAB_019" + " \n\t./-:;\"'()[]{}=<>+*#@$%&!?,~`|\\^" + "é\u00a0\u2028ß😀"
TEXT = st.text(alphabet=ALPHABET, max_size=60)


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=6), pick=st.data())
def test_a_text_holding_the_string_is_never_ruled_out(texts, pick):
    pre = Prefilter()
    for k, t in enumerate(texts):
        assert pre.add(f"t{k}", t)
    k = pick.draw(st.integers(0, len(texts) - 1))
    t = texts[k]
    a = pick.draw(st.integers(0, len(t)))
    b = pick.draw(st.integers(a, len(t)))
    others = pick.draw(st.lists(TEXT, max_size=3))
    masks = pre.holders([t[a:b], *others])
    for s, m in masks.items():
        for j, text in enumerate(texts):
            if s in text:
                assert m is None or m & pre.bit(f"t{j}"), (s, text)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(TEXT, min_size=2, max_size=8), pick=st.data())
def test_texts_added_between_look_ups_extend_the_index_in_place(texts, pick):
    """A look-up between two additions leaves nothing that stops the next from extending a trigram's
    list (a bytearray under a live view cannot grow), and each answer covers every text added so far."""
    pre = Prefilter()
    for k, t in enumerate(texts):
        assert pre.add(f"t{k}", t)
        a = pick.draw(st.integers(0, len(t)))
        s = t[a:pick.draw(st.integers(a, len(t)))]
        m = pre.holders([s])[s]
        for j, text in enumerate(texts[:k + 1]):
            if s in text:
                assert m is None or m & pre.bit(f"t{j}"), (s, text)


def test_most_texts_without_the_term_are_ruled_out():
    pre = Prefilter()
    texts = {f"m{i}": f"def handler_{i}():\n    return parse_body(req{i}) + src/mod{i}.py\n" for i in range(40)}
    for k, t in texts.items():
        pre.add(k, t)
    held = pre.holders(["src/mod7.py", "handler_12", "mod3", "parse_body", "nowhere_at_all", "a.b"])
    assert held["src/mod7.py"] == pre.bit("m7")
    assert held["handler_12"] == pre.bit("m12")
    assert held["mod3"] == pre.bit("m3") | pre.bit("m30") | sum(pre.bit(f"m3{i}") for i in range(1, 10))
    assert held["parse_body"] == sum(pre.bit(k) for k in texts)
    assert held["nowhere_at_all"] == 0
    assert held["a.b"] is None  # no run of three characters: nothing is ruled out


def test_it_is_bounded_and_a_text_it_does_not_take_is_tested_as_before():
    pre = Prefilter(max_texts=2)
    assert pre.add("a", "alpha_one") and pre.add("b", "beta_two")
    assert not pre.add("c", "gamma_three") and pre.bit("c") is None
    index = TermIndex(read_from=0)
    index._runs = pre
    lost = [Lost("a", "alpha_one", 1), Lost("b", "beta_two", 2), Lost("c", "gamma_three", 3)]
    assert [x.memory_id for x in index.unread(lost, frozenset({"gamma_three", "alpha_one"}))] == ["a", "c"]
    runs = Prefilter(max_runs=3)
    assert runs.add("a", "one_run two_run three_run") and not runs.add("b", "four_run")
    # what one call reads is bounded too: the texts past the budget are read by the next call
    some = Prefilter()
    texts = [(f"k{i}", "x" * 40 + str(i)) for i in range(5)]
    some.read(texts, 100)
    assert [some.bit(k) is not None for k, _ in texts] == [True, True, True, False, False]
    some.read(texts, 100)
    assert all(some.bit(k) is not None for k, _ in texts)


def test_unread_yields_the_texts_a_substring_test_finds_and_skips_those_read():
    index = TermIndex(read_from=0)
    lost = [Lost(f"m-{i:016x}", f"output {i}: src/mod{i}.py, parse_body and x.y\n", i) for i in range(30)]
    for terms in ({"src/mod3.py"}, {"mod1"}, {"parse_body", "zzz_none"}, {"x.y"}, {"nowhere"}):
        want = [x.memory_id for x in lost if any(t in x.text for t in terms)]
        assert [x.memory_id for x in index.unread(lost, frozenset(terms))] == want
    index.add(lost[:5])
    assert [x.memory_id for x in index.unread(lost, frozenset({"parse_body"}))] == [x.memory_id for x in lost[5:]]


def test_lost_texts_are_read_into_the_prefilter_once_they_hold_enough_and_then_until_none_is_left():
    index = TermIndex(read_from=1_000)
    lost = [Lost(f"m{i}", f"text {i} of src/mod{i}.py " + "x" * 300, i) for i in range(3)]
    list(index.unread(lost, frozenset({"src/mod1.py"})))
    assert index._runs.bit("m0") is None  # 3 texts of ~330 characters: tested, not read
    lost += [Lost(f"m{i}", f"text {i} of src/mod{i}.py " + "y" * 300, i) for i in range(3, 200)]
    assert [x.memory_id for x in index.unread(lost, frozenset({"src/mod1.py"}))] == ["m1"]
    read = sum(index._runs.bit(x.memory_id) is not None for x in lost)
    assert 0 < read < len(lost)  # PREFILTER_CHARS a request
    for _ in range(5):
        assert [x.memory_id for x in index.unread(lost, frozenset({"src/mod150.py"}))] == ["m150"]
    assert all(index._runs.bit(x.memory_id) is not None for x in lost)


def test_the_index_is_out_of_the_garbage_collectors_sight():
    """Its dicts hold only atoms (bytes, ints): a full collection, which holds the interpreter lock,
    never walks them (under issue 19's load the conversations' indexes were two thirds of the
    engine's tracked objects, as lists of runs)."""
    import gc

    pre = Prefilter()
    for i in range(40):
        pre.add(f"t{i}", " ".join(f"name_{i}_{j} value{j * i} path/to/file_{j}.py" for j in range(200)))
    gc.collect()
    assert not any(gc.is_tracked(d) for d in (pre._bit, pre._texts, pre._run, pre._grams))
    assert pre.holders(["file_7.py"])["file_7.py"] == (1 << 40) - 1
