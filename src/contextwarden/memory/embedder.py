"""Local sentence embeddings: all-MiniLM-L6-v2 as Chroma ships it (ONNX), run faster.

Chroma's ``DefaultEmbeddingFunction`` pads every input to 256 tokens, so a five-word query costs a
256-token forward pass. :class:`Embedder` runs the same model file with the same tokenizer, truncation
(256 tokens), mean pooling and L2 normalisation, but pads each batch only to its longest input and
groups inputs of similar length into batches. Attention masks make padding irrelevant to the result,
so the vectors match Chroma's (cosine > 0.999; the store can mix the two) at a fraction of the cost.

:func:`load_embedder` finds the model: the configured ``memory.model_dir``, else Chroma's cache
(``~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx``), else Chroma's own download. Without any, memory
works lexical-only and says so; it never raises.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from ..util.lru import LRU

_WORDS = re.compile(r"[A-Za-z0-9]+|\S")  # BERT's pre-tokens of ASCII text
MAX_TOKENS = 256  # what Chroma (and sentence-transformers) truncate this model to
# Rows x padded width per ONNX run. Measured on these 2-core machines with ~200-token chunks: 32 rows a
# run cost ~1.6x the CPU per token of 1-4 rows (the activations of a big batch fall out of the cache, and
# more padding), while short texts (queries, chat turns) still batch up to ``batch_size`` rows.
MAX_BATCH_TOKENS = 1024
REQUIRED_FILES = ("model.onnx", "tokenizer.json")


def chroma_cache_dir() -> Path:
    """Where Chroma keeps (and downloads) the model: ``<DOWNLOAD_PATH>/onnx``."""
    try:
        from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

        return Path(ONNXMiniLM_L6_V2.DOWNLOAD_PATH) / ONNXMiniLM_L6_V2.EXTRACTED_FOLDER_NAME
    except Exception:  # chromadb missing or changed: its default location
        return Path.home() / ".cache" / "chroma" / "onnx_models" / "all-MiniLM-L6-v2" / "onnx"


class Embedder:
    """Embeds texts into L2-normalised float32 vectors (``dim`` = 384 for this model).

    Thread-safe: ONNX Runtime sessions may be run concurrently and the tokenizer is configured once.
    """

    def __init__(self, model_dir: str | os.PathLike, source: str | None = None, batch_size: int = 32,
                 max_tokens: int = MAX_TOKENS, threads: int | None = None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, fold: bool = True) -> None:
        """``fold``: ONNX Runtime folds the int8 model's weights into float32 ones as it loads it (each run
        ~5 ms sooner: a search's query embeds in ~3.5 ms instead of ~9), in a session ~120 MB larger (~70 MB
        once an unfolded one has dequantised a full batch); without (the embedding worker's batches, at idle
        priority) the weights stay int8 and each run dequantises them. The vectors differ by ~1e-6."""
        import onnxruntime as ort  # (here: ~0.3 s to import, and only a process that embeds needs it)

        self.model_dir = Path(model_dir)
        self.source = source or f"model dir {self.model_dir}"
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_batch_tokens = max_batch_tokens
        counter = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        counter.no_truncation()
        counter.no_padding()
        self._counter = counter
        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.enable_truncation(max_length=max_tokens)
        tok.no_padding()  # we pad per batch, to the longest input only
        self._tok = tok
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # one thread by default: a short query is ~5 ms on one core, and more spin against the proxy
        so.intra_op_num_threads = threads or 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no memory pattern: it plans and keeps buffers per input shape, and a batch here is padded to its
        # longest input, so shapes rarely repeat (the same vectors to the bit and the same CPU; 60 batches of
        # mixed lengths 396 -> 312 MB resident, a proxy's embedding worker ~25-45 MB less: docs/benchmarks.md)
        so.enable_mem_pattern = False
        self._session = ort.InferenceSession(str(self.model_dir / "model.onnx"), sess_options=so,
                                             providers=["CPUExecutionProvider"],
                                             disabled_optimizers=[] if fold else ["ConstantFolding"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._run([tok.encode("dimension probe").ids]).shape[1])

    def __repr__(self) -> str:
        return f"Embedder(dim={self.dim}, source={self.source!r})"

    def warm(self) -> None:
        """Run a few input lengths once: ONNX Runtime's first run of each length is slow (~0.3 s), paid
        here rather than by the first request (the memory service) or the first batch (its worker)."""
        self(["warm up " * n for n in (4, 12, 30)])

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts`` in order: float32 array of shape ``(len(texts), dim)``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        encoded = self._tok.encode_batch(texts, add_special_tokens=True)
        ids = [e.ids for e in encoded]
        out: np.ndarray | None = None
        for idx in self.batches([len(x) for x in ids]):
            vecs = self._run([ids[i] for i in idx])
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        assert out is not None
        return out

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Indexes of inputs grouped into ONNX runs: sorted by length (little padding), at most
        ``batch_size`` rows and ``max_batch_tokens`` rows x padded width a run."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:  # ascending: the width of a run is its last input's length
            if cur and (len(cur) >= self.batch_size or (len(cur) + 1) * lengths[i] > self.max_batch_tokens):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` (no [CLS]/[SEP], no truncation). Additive over lines: BERT's
        pre-tokenizer splits at whitespace, so the pieces of lines joined by newlines are the sum of each
        line's pieces (the chunker counts each line once)."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def count_tokens_batch(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._counter.encode_batch(list(texts), add_special_tokens=False)]

    def token_counter(self) -> PieceCounter:
        """The chunker's measure for this model (see :class:`PieceCounter`)."""
        return PieceCounter(self)

    def states(self, texts: list[str]) -> list[tuple[np.ndarray, list[int]]]:
        """Each text's word pieces as the model reads them in context: ``(vectors, ids)``, the last hidden
        states L2-normalised one by one (float32, ``(pieces, dim)``) and the pieces' token ids, [CLS] and
        [SEP] left out (token-level matching, :mod:`.asides`)."""
        ids = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]
        out: list[tuple[np.ndarray, list[int]]] = [(np.zeros((0, self.dim), np.float32), [])] * len(ids)
        for idx in self.batches([len(x) for x in ids]):
            hidden, _ = self._hidden([ids[i] for i in idx])
            for row, i in enumerate(idx):
                h = hidden[row, 1:len(ids[i]) - 1]
                norm = np.linalg.norm(h, axis=1, keepdims=True)
                out[i] = ((h / np.maximum(norm, 1e-9)).astype(np.float32), ids[i][1:-1])
        return out

    def _hidden(self, ids_list: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The model's last hidden states ``(batch, width, dim)`` of ``ids_list`` padded to the longest,
        and the attention mask."""
        width = max(1, max(len(ids) for ids in ids_list))
        ids = np.zeros((len(ids_list), width), dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, seq in enumerate(ids_list):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self._session.run(None, feeds)[0], mask

    def _run(self, ids_list: list[list[int]]) -> np.ndarray:
        hidden, mask = self._hidden(ids_list)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        norm[norm == 0] = 1e-12
        return (pooled / norm).astype(np.float32)


class PieceCounter:
    """``count(text)`` in the model's word pieces, additive over lines (``additive = True`` lets the
    chunker count every line once and sum). An ASCII text is counted word by word, each word's pieces
    once (BERT's pre-tokenizer splits ASCII at whitespace and around every other character that is not
    a letter or digit, and WordPiece cuts each word on its own): code repeats its names, and one call
    into the tokenizer per line cost ~4 ms of a 12 KB tool result."""

    additive = True
    specials = 2  # [CLS] and [SEP]: what a chunk costs on top of its pieces

    def __init__(self, embedder: Embedder, cache: int = 50_000) -> None:
        self.embedder = embedder
        self._words: dict[str, int] = {}
        self._max = cache
        # what the tokenizer does not split as words: its own tokens ("[CLS]"...: one piece each, matched
        # first) and control characters (dropped)
        added = [re.escape(t.content) for t in embedder._counter.get_added_tokens_decoder().values()]
        self._other = re.compile("|".join(["[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", *added]))

    def __call__(self, text: str) -> int:
        if not text.isascii() or self._other.search(text):
            return self.embedder.count_tokens(text)
        words = self._words
        n = 0
        for w in _WORDS.findall(text):
            c = words.get(w)
            if c is None:
                if len(words) >= self._max:
                    words.clear()
                c = words[w] = self.embedder.count_tokens(w)
            n += c
        return n

    def ends(self, text: str) -> list[int]:
        """Where each of ``text``'s word pieces ends (character offsets), in one tokenisation: the chunker
        cuts a line longer than a chunk at every ``max_tokens``-th of them."""
        return [e for _, e in self.embedder._counter.encode(text, add_special_tokens=False).offsets]


def _model_files_ok(d: Path) -> bool:
    return all((d / f).is_file() for f in REQUIRED_FILES)


def _chroma_download() -> Path:
    """Let Chroma download its model into its cache (needs internet); returns the folder."""
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    ef = ONNXMiniLM_L6_V2()
    ef._download_model_if_not_exists()
    return Path(ef.DOWNLOAD_PATH) / ef.EXTRACTED_FOLDER_NAME


def load_embedder(model_dir: str | os.PathLike | None, download: bool = True,
                  threads: int | None = None) -> tuple[Embedder | None, str]:
    """Find and load the model: ``(embedder, message)`` or ``(None, why)``. Never raises.

    Order: ``model_dir`` (the profile's ``memory.model_dir``), Chroma's cache, Chroma's download
    (skipped when ``download`` is false).
    """
    problems: list[str] = []
    if model_dir:
        d = Path(model_dir).expanduser()
        if _model_files_ok(d):
            try:
                e = Embedder(d, source=f"model dir {d} (configured)", threads=threads)
                return e, f"embeddings: {e.source}"
            except Exception as ex:  # a corrupt file must not stop the proxy
                problems.append(f"configured model dir {d} failed to load: {ex}")
        else:
            problems.append(f"configured model dir {d} has no {' + '.join(REQUIRED_FILES)}")
    cache = chroma_cache_dir()
    if _model_files_ok(cache):
        try:
            e = Embedder(cache, source=f"chroma cache {cache}", threads=threads)
            return e, f"embeddings: {e.source}" + (f" ({'; '.join(problems)})" if problems else "")
        except Exception as ex:
            problems.append(f"chroma cache {cache} failed to load: {ex}")
    else:
        problems.append(f"not in chroma cache {cache}")
    if download:
        try:
            d = _chroma_download()
            e = Embedder(d, source=f"chroma cache {d} (downloaded)", threads=threads)
            return e, f"embeddings: {e.source}"
        except Exception as ex:
            problems.append(f"download failed: {type(ex).__name__}: {str(ex)[:200]}")
    return None, ("no embedding model: lexical-only retrieval (" + "; ".join(problems)
                  + "; set memory.model_dir to a folder with model.onnx and tokenizer.json)")


class Worker(Protocol):
    """An embedder in another process (embedworker.BackgroundEmbedder)."""

    def __call__(self, texts: list[str]) -> np.ndarray: ...

    def states(self, texts: list[str]) -> list[tuple[np.ndarray, list[int]]]: ...

    def close(self) -> None: ...


class CachedEmbedder:
    """An embedder with an LRU of recent texts (a tool loop asks the same query again and again), and
    optionally a persistent cache on disk (the evaluation replays the same corpora run after run)."""

    def __init__(self, inner, max_entries: int = 4096, disk: str | Path | None = None) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.source = getattr(inner, "source", "?")
        self._lru = LRU(max_entries)  # text key -> vector
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        # what background threads' misses go to (embedworker.BackgroundEmbedder), and which threads those are
        self.background: Worker | None = None
        self.is_background: Callable[[], bool] = lambda: False
        if disk:
            self.attach_disk(disk)

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.inner!r})"

    def attach_disk(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        # several processes may share the file (an eval and its live proxy's memory process): wait for
        # a writer rather than fail, and treat the cache as best effort (see __call__)
        db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS emb (k BLOB PRIMARY KEY, v BLOB)")
        with self._lock:
            self._db = db

    def _key(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                               person=b"minilm-l6-v2").digest()

    def token_counter(self):
        tc = getattr(self.inner, "token_counter", None)
        return tc() if tc is not None else None

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        keys = [self._key(t) for t in texts]
        for i, (t, k) in enumerate(zip(texts, keys)):
            v = self._lru.get(k)  # (a hit counts as a use; a miss is put once computed)
            if v is not None:
                out[i] = v
            else:
                missing.setdefault(t, []).append(i)
        with self._lock:
            db = self._db
        if missing and db is not None:
            ks = {keys[idx[0]]: t for t, idx in missing.items()}  # (hashed once, above)
            found = {}
            kl = list(ks)
            with self._db_lock:  # one sqlite connection, used from the request and ingestion threads
                for s in range(0, len(kl), 500):
                    part = kl[s:s + 500]
                    try:
                        rows = db.execute(f"SELECT k, v FROM emb WHERE k IN ({','.join('?' * len(part))})",
                                          part).fetchall()
                    except sqlite3.Error:  # a cache: a miss costs an embedding, never the caller
                        rows = []
                    found.update({bytes(k): np.frombuffer(v, dtype=np.float32) for k, v in rows})
            for k, v in found.items():
                t = ks[k]
                for i in missing.pop(t):
                    out[i] = v
        self.hits += len(texts) - sum(len(v) for v in missing.values())
        if missing:
            todo = list(missing)
            bg = self.background
            vecs = (bg if bg is not None and self.is_background() else self.inner)(todo)
            self.misses += len(todo)
            for t, v in zip(todo, vecs):
                for i in missing[t]:
                    out[i] = v
            if db is not None:
                rows = [(keys[missing[t][0]], np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(todo, vecs)]
                with self._db_lock:
                    try:
                        db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)
                    except sqlite3.Error:
                        pass  # not cached this time
        for k, v in zip(keys, out):
            if self._lru.peek(k) is None:
                self._lru.put(k, v.copy())
        return out

    def states(self, texts: list[str]) -> list[tuple[np.ndarray, list[int]]]:
        """The inner embedder's word-piece states (:meth:`Embedder.states`; not cached), from the worker on
        a background thread, like the vectors' misses."""
        bg = self.background
        return (bg if bg is not None and self.is_background() else self.inner).states(texts)

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
        with self._lock, self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
