"""Sections of long-term memory and tagging."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from .base import Section

# all-MiniLM-L6-v2 sees 256 word pieces, [CLS] and [SEP] included: a longer chunk is embedded on its
# first 254 pieces only, and the rest of it is never found by vector search
MODEL_MAX_TOKENS = 256
CHUNK_TOKENS_MAX = MODEL_MAX_TOKENS - 2


class TaggingSection(Section):
    enabled: bool = True
    """Tag each turn with keywords (shown in events, used to skip retrieval of active topics)."""

    max_tags: int = 6
    """Tags per turn."""

    merge_similarity: float = 88
    """rapidfuzz ratio above which two tags are merged."""

    embedding_tagger: bool = False
    """Also tag with the embedding model (nearest of known tags)."""

    active_turns: int = 4
    """Recent messages of the history whose tags are the active topics (memory skips items about them)."""


class MemorySection(Section):
    enabled: bool = True
    """Store completed turns and inject relevant older ones."""

    chroma_url: str | None = None
    """A Chroma server (``http://host:port``) shared by several proxies; default is embedded under cw_home."""

    model_dir: str | None = None
    """Directory of the all-MiniLM-L6-v2 ONNX model; default is Chroma's cache, downloaded if missing."""

    embed_cache: str | None = None
    """A file of embeddings kept between runs (SQLite, by text hash; the evaluations use it). None: none."""

    inject: bool = True
    """Inject retrieved memory into requests (off: store only)."""

    inject_tool_steps: bool = False
    """Also inject on the steps of a tool loop (a last user message of tool results only). Off: memory
    goes once, with the message a person wrote, and the steps after it keep their cached prefix."""

    agent_own_session: bool = False
    """In an agent's session (a history with tool calls: a coding client at work), also inject the
    session's own items that the client still sends. Off: what clearing and compaction took of those
    their stubs and summary name by id, and automatic recall puts back what an answer quotes (docs/REPLAY.md,
    "What memory costs in a coding session"); other sessions' items, and what the client's own history
    dropped (its own compaction), still come. A conversation without tool calls is not affected."""

    agent_new_only: bool = True
    """In an agent's session, a block holds only items the message's words and its meaning both found,
    that the conversation has not had yet, and that (unless a person wrote them) name something the
    client's request does not hold (docs/REPLAY.md, "What memory costs in a coding session"). Off: the
    block as in a chat."""

    budget_fraction: float = 0.10
    """Fraction of the context window memory may use in one request."""

    top_k: int = 8
    """Items retrieved per request at most."""

    min_score: float = 0.0
    """Fused-score floor below which items are not injected."""

    shared_workspace: str | None = None
    """Name of a workspace whose memory every tenant may read; by default memory is per tenant."""

    api_require_credential: bool = False
    """The recall API (``recall``, ``search``, ``mcp``) requires the caller's client credential and shows
    that tenant's memory only (a shared proxy); off, the token alone sees every tenant of this home."""

    ttl_days: float = 30
    """Items older than this are expired by ``contextwarden memory prune``."""

    process: Literal["auto", "separate", "inline"] = "auto"
    """Where embedding, the lexical index, Chroma and ingestion run: ``separate`` (a memory process over a
    Unix socket under cw_home), ``inline`` (in the calling process), ``auto`` (separate in the proxy)."""

    pending_max: int = 200_000
    """Items waiting to be embedded in the memory process's pending table; past this the oldest are
    stored as text only and embedded once the table is empty again."""

    ingest_batch: int = 64
    """Items the memory process's ingestion takes per batch (a shutdown waits for at most one)."""

    ingest_batch_chars: int = 24_000
    """And characters of text per batch (a larger submission is still taken whole)."""

    embed_idle: bool = True
    """Ingestion's embeddings run in a worker process at idle CPU priority (memory/embedworker.py): under
    load they lag instead of taking CPU from requests. False: in the ingestion thread (niced)."""

    embed_quiet_ms: float = 250.0
    """The memory process embeds and stores what waits once no call (a search, a turn) came for this long:
    under a steady load the vectors wait and the requests keep the CPU (each item is searchable by its words
    as it is submitted). 0: at once."""

    prefetch: bool = True
    """Start a person's message's search (the embeddings) as soon as the request is read, while the other
    stages run; the memory stage finishes it (BM25 and the fusion). Same results, less waiting."""

    shutdown_flush_s: float = 2.0
    """On shutdown, seconds spent storing pending items; the rest is stored at the next start."""

    chunk_tokens: int = 240
    """Largest chunk of a long text, in the embedding model's word pieces (at most ``CHUNK_TOKENS_MAX``)."""

    timeout_ms: float = 150
    """Retrieval gives up after this long and the request goes without memory."""

    candidates: int = 50
    """Items each ranking (vector, lexical) contributes to the fusion."""

    rrf_k: float = 30
    """Reciprocal rank fusion constant: larger flattens the difference between ranks."""

    vector_weight: float = 1.5
    """Weight of the vector ranking in the fusion."""

    lexical_weight: float = 1.0
    """Weight of the lexical (BM25) ranking in the fusion."""

    context_weight: float = 0.3
    """Weight of the turns just before the last user message in the query (0: that message alone)."""

    context_below: int = 3
    """The turns before join the query only when the last user message has fewer content words than
    this (a follow-up such as "and the tests?"); a self-contained question is searched alone."""

    common_term_ratio: float = 0.2
    """Query words more than this share of the stored items contain are left out of the vector query."""

    min_similarity: float = 0.1
    """Cosine similarity below which a vector hit does not count in the fusion. 0.1: LoCoMo's held-out
    conversations gained from 0.2 down to it and not below (docs/memory-retrieval.md, "Results")."""

    neighbour_weight: float = 1.0
    """Weight, in the fusion, of a third ranking: the messages next to the best hits (0: off)."""

    neighbour_depth: int = 15
    """How many of the best hits lend their neighbouring messages to that ranking."""

    speaker_weight: float = 2.0
    """Weight, in the fusion, of rankings within the current session's turns of the one participant a
    question names (``MemoryItem.speaker``) (0: off)."""

    date_weight: float = 1.0
    """Weight, in the fusion, of rankings within the current session's turns dated near a day the question
    names (``MemoryItem.when``) (0: off)."""

    related_weight: float = 0.3
    """The session's words nearest a question's by embedding join its BM25 query at this weight times
    their similarity (``memory/related.py``: "video games" finds "Valorant") (0: off). 0.3: LoCoMo's
    held-out conversations gained at it (docs/memory-retrieval.md)."""

    related_floor: float = 0.5
    """Cosine similarity of a session word to a question word for it to join the question's BM25 query."""

    related_per_word: int = 3
    """Session words a question word brings into its query, at most."""

    relevance_floor: float = 0.23
    """Nothing is injected when the best candidate's cosine similarity to the query is below this (with a
    model; candidates stored too recently to be embedded yet are embedded at the search for it). 0.23: the
    1st percentile of LoCoMo questions' best similarity. 0: off."""

    other_sessions_weight: float = 0.35
    """The current session first: the rankings are made within it and over the tenant's other sessions,
    the latter counting this much in the fusion (1: no preference; 0: the current session only)."""

    project_weight: float = 1.0
    """The other sessions of the client's project (its working directory, ``memory/project.py``) are
    ranked on their own, counting this much in the fusion (at or below ``other_sessions_weight``: no
    preference for the project)."""

    @field_validator("chunk_tokens")
    @classmethod
    def _chunk_fits_the_model(cls, v: int) -> int:
        if v < 16:
            raise ValueError(f"memory.chunk_tokens must be at least 16, got {v}")
        if v > CHUNK_TOKENS_MAX:
            raise ValueError(f"memory.chunk_tokens {v} exceeds what the embedding model sees ({MODEL_MAX_TOKENS} word "
                             f"pieces, {CHUNK_TOKENS_MAX} of text): the rest of each chunk would never be embedded; "
                             f"use at most {CHUNK_TOKENS_MAX}")
        return v
