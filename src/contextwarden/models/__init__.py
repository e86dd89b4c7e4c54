"""Typed, lossless views of the request bodies of the APIs we understand.

Every model keeps unknown fields (``extra="allow"``); unknown roles are plain strings and unknown
block types parse into :class:`~contextwarden.models.base.UnknownBlock`, so nothing a provider adds
next month is lost when a stage rewrites a body.
"""

from . import anthropic, openai_chat, openai_responses
from .base import ApiKind, UnknownBlock, WireModel

__all__ = ["ApiKind", "WireModel", "UnknownBlock", "anthropic", "openai_chat", "openai_responses"]

