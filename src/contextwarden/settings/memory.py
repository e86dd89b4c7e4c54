"""Sections of long-term memory and tagging."""

from __future__ import annotations

from .base import Section


class TaggingSection(Section):
    enabled: bool = True
    """Tag each turn with keywords (shown in events, used to skip retrieval of active topics)."""

    max_tags: int = 6
    """Tags per turn."""

    merge_similarity: float = 88
    """rapidfuzz ratio above which two tags are merged."""

    embedding_tagger: bool = False
    """Also tag with the embedding model (nearest of known tags)."""


class MemorySection(Section):
    enabled: bool = True
    """Store completed turns and inject relevant older ones."""

    chroma_url: str | None = None
    """A Chroma server (``http://host:port``) shared by several proxies; default is embedded under cw_home."""

    model_dir: str | None = None
    """Directory of the all-MiniLM-L6-v2 ONNX model; default is Chroma's cache, downloaded if missing."""

    inject: bool = True
    """Inject retrieved memory into requests (off: store only)."""

    budget_fraction: float = 0.10
    """Fraction of the context window memory may use in one request."""

    top_k: int = 8
    """Items retrieved per request at most."""

    min_score: float = 0.0
    """Fused-score floor below which items are not injected."""

    shared_workspace: str | None = None
    """Name of a workspace whose memory every tenant may read; by default memory is per tenant."""

    ttl_days: float = 30
    """Items older than this are expired by ``contextwarden memory prune``."""

    queue_size: int = 1000
    """Ingestion queue length; when full, work is dropped with an event (never blocks traffic)."""

    chunk_tokens: int = 400
    """Target size of a chunk of a long tool output."""

    timeout_ms: float = 150
    """Retrieval gives up after this long and the request goes without memory."""
