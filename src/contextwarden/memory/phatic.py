"""What a person says to keep a conversation going, not what it is about: a message made only of these
words (and stopwords) has nothing to search memory for ("hello", "thanks!", "go on", "is anyone there?")
and is not remembered ("Thanks!", "You're welcome.")."""

from __future__ import annotations

from .words import stem, tokenize

PHATIC = frozenset(stem(w) for w in """
hello hullo hallo hey hi hiya howdy yo greetings morning afternoon evening night bye goodbye cheers
thanks thank thx ty cheers appreciated welcome sorry excuse pardon
continue continuing proceed carry go ahead resume keep going next more again retry repeat
ok okay alright fine sure yes yeah yep yup no nope nah right correct exactly indeed agreed
anyone anybody someone somebody there here listening awake alive online ping pong test testing
please pls wait hold hmm hm uh um ah oh wow cool nice great good perfect done
""".split())


def content_words(text: str) -> list[str]:
    """The index terms of ``text`` that say what it is about: not stopwords, not greetings and
    acknowledgements (``PHATIC``)."""
    return [t for t in tokenize(text) if t not in PHATIC]


def topical(tags: list[str]) -> list[str]:
    """The tags that name a topic: not a greeting or an acknowledgement ("hello", "thanks")."""
    return [t for t in tags if content_words(t)]
