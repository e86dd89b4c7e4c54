"""The keyword tagger: its work grows at most linearly with its input (random-word tool output once took
3.7 s for 10 KB and 19 s for 20 KB: a pairwise merge of every distinct word), and a path is one tag."""

import random
import string
from types import SimpleNamespace

from contextwarden.memory import tagger
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


def _comparisons(monkeypatch, kt: KeywordTagger, text: str) -> int:
    """How many pairwise comparisons tagging ``text`` makes (the merge is the part that went quadratic)."""
    calls = []
    real = tagger.fuzz.ratio
    monkeypatch.setattr(tagger, "fuzz", SimpleNamespace(ratio=lambda a, b: calls.append(1) or real(a, b)))
    kt.tag(text)
    return len(calls)


def test_random_words_tag_in_linear_time(monkeypatch):
    kt = KeywordTagger()
    small, large = _random_words(10_000, 1), _random_words(40_000, 2)
    n_small, n_large = _comparisons(monkeypatch, kt, small), _comparisons(monkeypatch, kt, large)
    # linear would be 4x; quadratic 16x (work counted, not timed: bench/ measures time)
    assert 0 < n_large < 8 * n_small, (n_small, n_large)
    assert kt.tag(large)  # still tags


def test_fuzzy_merge_still_merges_near_duplicates():
    kt = KeywordTagger()
    tags = kt.tag("The adoption agency called. Adoption agencies are slow. adoption agency again")
    assert sum("adoption" in t for t in tags) <= 2


def test_a_path_is_one_tag_not_its_parts_again():
    kt = KeywordTagger()
    tags = kt.tag("What is the deploy script called? It is tools/deploy.sh and it reads STAGING_HOST.")
    assert "tools/deploy.sh" in tags and "STAGING_HOST" in tags
    assert "tools" not in tags and "deploy.sh" not in tags  # (its directory was left behind as a word)
    tags = kt.tag("Fix the failing test in tests/test_auth.py and check the login flow")
    assert "tests/test_auth.py" in tags and "test_auth" not in tags  # (its name was an identifier too)
    assert "login" in tags  # the room the duplicates took
    assert "os.path.join" in kt.tag("call os.path.join( here")  # an identifier outside any path stays one
