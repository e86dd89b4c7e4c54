"""The words of a text as memory's rankings and the compression stage see them: stopwords, a light stemmer,
and index terms (:func:`tokenize`). Light on purpose (``re`` only): the compression workers import it
without the rest of memory.
"""

from __future__ import annotations

import re

STOPWORDS = frozenset("""
a about above across after again against all almost alone along already also although always am among an and
another any anybody anyone anything anyway anywhere are aren't around as ask asked asking at away back be became
because become been before began begin behind being below best better between beyond both bring brought but by
came can can't cannot could couldn't did didn't do does doesn't doing don't done down during each either else
enough especially even ever every everybody everyone everything everywhere few find first for found from full
further gave get gets getting give given go goes going gone good got great had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself hey hi him himself his how how's however i i'd i'll i'm
i've if in into is isn't it it's its itself just keep kept kind know known last later least less let let's like
liked likely made make makes making many may maybe me mean meant might mine more most mostly much must my myself
need needs never new next no nobody none nor not nothing now of off often oh ok okay old on once one ones only
onto or other others otherwise our ours ourselves out over own part per perhaps please put quite rather re really
right said same saw say says see seem seemed seems seen several shall she she'd she'll she's should shouldn't show
since so some somebody someone something sometimes somewhat soon still such sure take taken tell than thank thanks
that that's the their theirs them themselves then there there's these they they'd they'll they're they've thing
things think this those though thought through thus to today together told too took toward towards tried truly
try trying two under until up upon us use used uses using usually very via want wanted wants was wasn't way we
we'd we'll we're we've well went were weren't what what's whatever when where where's whether which while who
who's whole whom whose why will with within without won't wonder would wouldn't yeah yes yet you you'd you'll
you're you've your yours yourself yourselves
able actually ah awesome cool definitely glad guess hope hoping lol lot lots nice pretty sounds super sure totally
wow yep yup amazing wonderful happy love loved loves feel feeling felt time times day days year years week weeks
thing stuff anyway hmm great fun exciting excited also really
return returns true false none null self def class import from var let const function
yesterday tomorrow tonight lately recently recent currently soon ago weekend morning evening night
provide example examples specific situation situations help question questions answer information tell explain
describe list lists include includes including based different various important possible sure certain
etc e.g i.e vs
""".split())

_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_'’.\-/]*[A-Za-z0-9_]|[A-Za-z0-9]")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_SPLIT = re.compile(r"[_.\-/]+")
# a JSON escape (a tool call's input is stored as JSON: a Write's ``"…\n.DS_Store\nThumbs.db"``): a
# separator, not the first letter of the next word (``n.ds_store``, ``nthumbs.db`` otherwise)
_ESCAPE = re.compile(r'(?<!\\)\\[ntrbf"]')


def stem(word: str) -> str:
    """A light English stemmer (plural, -ing, -ed): enough to treat ``agencies``/``agency`` as one tag."""
    w = word
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")):
        return w[:-1]
    if w.endswith("'s"):
        return w[:-2]
    if (w.endswith("ing") and len(w) > 5) or (w.endswith("ed") and len(w) > 4):
        w = w[:-3] if w.endswith("ing") else w[:-2]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":  # (a doubled consonant: "running" -> "run")
            w = w[:-1]
    return w


def tokenize(text: str, done: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Index terms of a text: lower-cased, stemmed words without stopwords; code identifiers and paths
    are kept whole *and* split into their parts (``load_embedder`` -> ``load_embedder load embedder``).
    Each distinct word is worked out once per text (source code repeats its names), or once while it is
    in ``done`` (the index's words seen lately)."""
    out: list[str] = []
    if "\\" in text:
        text = _ESCAPE.sub(" ", text)
    done = {} if done is None else done
    for tok in _TOKEN.findall(text):
        terms = done.get(tok)
        if terms is None:
            terms = done[tok] = tuple(_terms(tok))  # (a tuple of strings: nothing for the collector to walk)
        out += terms
    return out


def _terms(tok: str) -> list[str]:
    """The index terms of one word of :func:`tokenize`."""
    tok = tok.replace("’", "'")
    if "'" in tok:
        tok = tok.split("'", 1)[0]  # "caroline's" -> "caroline", "don't" -> "don" (a stopword-ish stub)
        if not tok:
            return []
    low = tok.lower()
    # (the words are ASCII: a capital after the first letter and a small letter anywhere is camelCase)
    compound = ("_" in tok or "." in tok or "-" in tok or "/" in tok) or (tok[1:] != low[1:] and tok != tok.upper())
    if compound:
        out = [low.strip("._-/")]
        for part in _SPLIT.split(tok):
            for sub in (_CAMEL.findall(part) or [part]):
                s = sub.lower()
                if len(s) > 1 and s not in STOPWORDS:
                    out.append(stem(s))
        return out
    if low not in STOPWORDS and (len(low) > 1 or low.isdigit()):
        return [stem(low)]
    return []


def plain_words(text: str, min_len: int = 3) -> list[tuple[str, str]]:
    """(term, word) of the plain words of ``text``: letters only, at least ``min_len`` of them, one index
    term each (not a stopword, not a compound); the word lower-cased as written (what an embedder reads)."""
    out = []
    for tok in _TOKEN.findall(text):
        if len(tok) >= min_len and tok.isalpha():
            t = _terms(tok)
            if len(t) == 1:
                out.append((t[0], tok.lower()))
    return out
