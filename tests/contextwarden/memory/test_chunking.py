"""Long tool outputs are cut at headings, fences and blank lines, never inside a line."""

from __future__ import annotations

import copy

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from contextwarden.memory.chunking import approx_tokens, chunk_text, proxy_tokens
from contextwarden.memory.embedder import PieceCounter
from contextwarden.settings.memory import CHUNK_TOKENS_MAX, MemorySection

DOC = (
    "# Report\n\nSummary line one.\nSummary line two.\n\n"
    "## Failures\n\n" + "".join(f"FAILED tests/test_mod{i}.py::test_case - AssertionError: x != {i}\n" for i in range(40))
    + "\n## Code\n\n```python\n" + "".join(f"def handler_{i}(request):\n    return respond({i})\n" for i in range(60))
    + "```\n\n## Notes\n\nshort closing note\n"
)


def _fence_synthetic(line: str) -> bool:
    return line.startswith("```")


def test_small_text_is_one_chunk_and_blank_is_none():
    assert chunk_text("one line", 100) == ["one line"]
    assert chunk_text("  \n\n ", 100) == []


def test_chunks_fit_and_never_cut_a_line():
    chunks = chunk_text(DOC, 120)
    assert len(chunks) > 4
    lines = set(DOC.splitlines())
    for c in chunks:
        assert approx_tokens(c) <= 120, c
        for line in c.splitlines():
            assert line in lines, f"cut mid-line: {line!r}"
    # nothing lost: every non-fence line of the input appears, in order
    got = [ln for c in chunks for ln in c.splitlines() if not _fence_synthetic(ln)]
    want = [ln for ln in DOC.splitlines() if not _fence_synthetic(ln)]
    assert [x for x in got if x.strip()] == [x for x in want if x.strip()]


def test_headings_start_chunks_and_stay_with_their_content():
    chunks = chunk_text(DOC, 120)
    for c in chunks:
        # a heading is never the last thing in a chunk, cut off from its section
        assert not c.rstrip().splitlines()[-1].startswith("#"), c
    assert any(c.startswith("## Failures") for c in chunks)
    assert any(c.startswith("## Notes") for c in chunks)


def test_a_big_fence_is_split_on_lines_and_reopened():
    chunks = chunk_text(DOC, 120)
    code = [c for c in chunks if "def handler_" in c]
    assert len(code) >= 3
    for c in code:
        body = c[c.index("```"):]
        assert body.startswith("```python\n") and body.rstrip().endswith("```"), c
        assert body.count("```") == 2  # each piece is one balanced fence
    # the section heading rides with the first piece of its code; the code lines are all there, in order
    assert code[0].startswith("## Code\n")
    got = [ln for c in code for ln in c.splitlines() if ln.startswith(("def ", "    return"))]
    assert got == [ln for ln in DOC.splitlines() if ln.startswith(("def ", "    return"))]


def test_a_fence_that_fits_is_never_split():
    fence = "```\n" + "".join(f"line {i}\n" for i in range(20)) + "```\n"
    text = "intro paragraph\n\n" + fence + "\n" + "after paragraph\n" * 30
    chunks = chunk_text(text, 60)
    holding = [c for c in chunks if "line 0" in c]
    assert len(holding) == 1 and all(f"line {i}\n" in holding[0] for i in range(20))


def test_only_a_line_longer_than_a_chunk_is_cut_at_spaces_and_nothing_is_lost():
    long_line = " ".join(f"word{i}" for i in range(400))  # ~2,400 characters on one line
    chunks = chunk_text("a\n" + long_line + "\nb\n", 50)
    assert all(approx_tokens(c) <= 50 for c in chunks)
    pieces = [c for c in chunks if "word" in c]
    assert len(pieces) > 5
    assert all(p.split()[0].startswith("word") and p.split()[-1].startswith("word") for p in pieces)
    assert " ".join(" ".join(p.split()) for p in pieces).split() == long_line.split()  # cut between words
    # no space at all: cut between characters, still nothing lost
    blob = "x" * 2000
    got = chunk_text(blob, 50)
    assert "".join(got) == blob and all(approx_tokens(c) <= 50 for c in got)


def test_chunks_fit_the_embedding_model_measured_by_its_own_tokenizer():
    from tests.support.memstore import embedder

    emb = embedder()
    count = emb.token_counter()
    text = ("## Results\n\n" + "".join(f"FAILED tests/unit/test_{i}.py::TestHandler::test_case_{i} - "
                                        f"AssertionError: {{'id': {i}, 'ok': False}} != {{'id': {i}, 'ok': True}}\n"
                                        for i in range(60))
            + "\n```json\n" + ",".join(f'{{"k{i}":"v{i}"}}' for i in range(800)) + "\n```\n")  # minified JSON line
    chunks = chunk_text(text, 240, count)
    assert len(chunks) > 5
    real = emb.count_tokens_batch(chunks)
    assert max(real) <= 240 and min(real) > 0
    # whole lines, except the one line longer than a chunk
    lines = set(text.splitlines())
    cut = [ln for c in chunks for ln in c.splitlines() if ln not in lines and ln != "```json" and ln != "```"]
    assert cut and all(ln in text for ln in cut) and all(ln.startswith(("{", '"')) or ln[0] in ',"{' for ln in cut)
    # the counter is additive over lines: summing line counts is the model's count of the whole
    assert count("a b\nc d") == count("a b") + count("c d") == emb.count_tokens("a b\nc d")


def test_proxy_over_estimates_word_pieces_without_a_model():
    from tests.support.memstore import embedder

    emb = embedder()
    samples = [DOC, "def handler(request):\n    return respond(request, 42)\n", "The deploy script reads STAGING_HOST.",
               "naïve café résumé", "0x7ffe12ab 0x7ffe12ac 0x7ffe12ad"]
    for s in samples:
        assert proxy_tokens(s) >= emb.count_tokens(s), s


def test_chunk_tokens_setting_must_fit_the_model():
    assert MemorySection().chunk_tokens <= CHUNK_TOKENS_MAX < 256
    assert MemorySection(chunk_tokens=CHUNK_TOKENS_MAX).chunk_tokens == CHUNK_TOKENS_MAX
    with pytest.raises(ValueError, match="exceeds what the embedding model sees"):
        MemorySection(chunk_tokens=400)
    with pytest.raises(ValueError):
        MemorySection(chunk_tokens=4)


def test_custom_counter_is_used():
    text = "\n".join(f"w{i} w w w" for i in range(100))
    chunks = chunk_text(text, 40, count=lambda s: len(s.split()))
    assert all(len(c.split()) <= 40 for c in chunks) and len(chunks) >= 10


_line = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=60)
_block = st.one_of(
    st.lists(_line, min_size=1, max_size=8).map(lambda ls: "\n".join(ls) + "\n"),
    st.lists(_line, min_size=1, max_size=8).map(lambda ls: "```\n" + "\n".join(ls) + "\n```\n"),
    _line.map(lambda s: "## " + s + "\n"),
    st.just("\n"),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_block, min_size=1, max_size=25), st.integers(min_value=5, max_value=80))
@example(["```\n" + "0" * 23 + "\n```\n"], 5)  # fits a chunk alone, not with its fences: cut (found by CI)
def test_property_no_line_is_ever_cut(blocks, size):
    text = "".join(blocks)
    lines = set(text.splitlines())
    # a line inside a code block goes into a chunk between its block's fences, which count too
    fenced = {ln for b in blocks if b.startswith("```\n") for ln in b.splitlines()[1:-1]}
    overlong = [ln for ln in lines if approx_tokens(ln) > size
                or (ln in fenced and approx_tokens("```\n" + ln + "\n```") > size)]
    for c in chunk_text(text, size):
        for line in c.splitlines():
            # whole lines, or pieces of a line longer than a whole chunk
            assert line in lines or line == "```" or any(line in ln for ln in overlong), (line, text)


def test_a_long_line_is_tokenised_once_whatever_its_pieces():
    """A minified file or a JSON dump on one line: the model's tokenizer reads it once, not once per piece."""
    from tests.support.memstore import embedder

    emb = embedder()
    read: list[int] = []

    class Counting:  # the model's tokenizer, counting the characters it is given
        def encode(self, text, **kw):
            read.append(len(text))
            return emb._counter.encode(text, **kw)

        def get_added_tokens_decoder(self):
            return emb._counter.get_added_tokens_decoder()

    spy = copy.copy(emb)
    spy._counter = Counting()
    line = ",".join(f'{{"id":{i},"path":"src/pkg{i % 7}/mod_{i}.py","ok":{str(i % 3 == 0).lower()}}}' for i in range(1200))
    chunks = chunk_text("head\n" + line + "\ntail\n", 240, PieceCounter(spy))
    assert chunks[0].strip() == "head" and chunks[-1].strip() == "tail" and len(chunks) > 40
    assert "".join(c.rstrip("\n") for c in chunks[1:-1]) == line and max(emb.count_tokens_batch(chunks)) <= 240
    assert sum(read) <= 2 * len(line)  # (a 5,760-character window a piece before: 1.0M characters)
