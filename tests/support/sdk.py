"""The provider SDKs the tests drive, imported at first use: ``from tests.support.sdk import anthropic, openai``.

Importing ``anthropic`` costs ~4 s of CPU and ``openai`` ~1.5 s more (their pydantic types), and every
pytest-xdist worker imports every test file while it collects; most tests never call an SDK. Each name here
stands for its SDK module and imports it when one of the SDK's public names is first read
(``anthropic.Anthropic``, ``pytest.raises(openai.RateLimitError)``), so a worker pays for an SDK only when
one of its tests uses it. Annotations (``-> anthropic.Anthropic``) cost nothing: every test module has
``from __future__ import annotations``. (Not ``importlib.util.LazyLoader``: pytest reads private
attributes of every module-level name as it collects, which would load a lazy module at once.)
"""

from __future__ import annotations

import importlib
from typing import Any


class _Module:
    """A module imported when one of its public names is first read; private names (what pytest's
    collection looks for) are not there."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


anthropic: Any = _Module("anthropic")
openai: Any = _Module("openai")
openai_chat_streaming: Any = _Module("openai.lib.streaming.chat")  # its Chat Completions accumulator
