"""The keyword tagger's time grows at most linearly with its input (random-word tool output once took
3.7 s for 10 KB and 19 s for 20 KB: a pairwise merge of every distinct word)."""

import random
import string
import time

from contextwarden.memory.tagger import KeywordTagger


def _random_words(chars: int, seed: int) -> str:
    r = random.Random(seed)
    out = []
    n = 0
    while n < chars:
        w = "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 9)))
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def _best_of(tagger, text, runs=3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        tagger.tag(text)
        best = min(best, time.perf_counter() - t)
    return best


def test_random_words_tag_in_linear_time():
    kt = KeywordTagger()
    small, large = _random_words(10_000, 1), _random_words(40_000, 2)
    kt.tag(small)  # warm the regexes
    t_small = _best_of(kt, small)
    t_large = _best_of(kt, large)
    # linear would be 4x; quadratic 16x. Allow noise on a loaded machine.
    assert t_large < 8 * t_small, (t_small, t_large)
    assert kt.tag(large)  # still tags


def test_fuzzy_merge_still_merges_near_duplicates():
    kt = KeywordTagger()
    tags = kt.tag("The adoption agency called. Adoption agencies are slow. adoption agency again")
    assert sum("adoption" in t for t in tags) <= 2
