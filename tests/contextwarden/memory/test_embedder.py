"""The fast embedder gives Chroma's vectors; without a model, memory degrades to lexical, never crashes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from contextwarden.memory import embedder as embedder_mod
from contextwarden.memory.embedder import Embedder, load_embedder
from tests.conftest import MODEL_DIR
from tests.support.memstore import embedder

TEXTS = [
    "hi",
    "How do I configure the auth middleware in FastAPI?",
    "def load(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "Ünïcödé, emoji 🎉 and 日本語 mixed in",
    "",
    "word " * 600,  # longer than 256 tokens: truncated exactly like Chroma
    "Caroline: I went to the LGBTQ support group yesterday and it was so powerful.",
]


def chroma_ef():
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    ef = ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])
    ef.DOWNLOAD_PATH = MODEL_DIR.parent  # the same model files: <DOWNLOAD_PATH>/onnx
    return ef


def test_vectors_equal_chromas_default_embedding_function():
    ours = embedder()(TEXTS)
    theirs = np.asarray(chroma_ef()(TEXTS), dtype=np.float32)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384) == theirs.shape
    cos = (ours * theirs).sum(axis=1)
    assert cos.min() > 0.999, cos
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_order_is_kept_across_length_sorted_batches():
    e = Embedder(MODEL_DIR, batch_size=2)  # forces several batches, each padded to its own longest
    many = [f"item {i} " + "pad " * (i * 7 % 50) for i in range(9)]
    together = e(many)
    alone = np.vstack([e([t]) for t in many])
    assert np.allclose(together, alone, atol=1e-5)
    assert e([]).shape == (0, 384)
    # different texts, different vectors (no row swapped or reused)
    assert len({tuple(np.round(v, 4)) for v in together}) == len(many)
    # each batch's shape is its own longest input's: the session keeps no memory pattern per shape (they
    # rarely repeat, and each one kept holds its buffers)
    assert e._session.get_session_options().enable_mem_pattern is False


def test_states_are_each_word_pieces_in_context_whatever_the_batch():
    """A text's word pieces (no [CLS]/[SEP]) with one unit vector each, the same alone as in a batch padded to
    a longer text; the pieces read in context differ from the same piece in another sentence."""
    e = embedder()
    alone = e.states(["river bank"])[0]
    batch = e.states(["I paid the money into my bank account this morning, then walked home.", "river bank"])
    assert alone[1] == e._counter.encode("river bank", add_special_tokens=False).ids
    assert np.allclose(np.linalg.norm(alone[0], axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch[1][0], alone[0], atol=1e-4)
    money = batch[0][0][batch[0][1].index(alone[1][1])]  # "bank" beside money
    assert float(money @ alone[0][1]) < 0.9


def test_load_embedder_prefers_the_configured_dir():
    e, msg = load_embedder(str(MODEL_DIR))
    assert e is not None and e.dim == 384 and "configured" in e.source and str(MODEL_DIR) in msg


def test_no_model_anywhere_gives_lexical_only_message(tmp_path, monkeypatch):
    # an empty Chroma cache, and a download that fails the way it does offline
    monkeypatch.setattr(embedder_mod, "chroma_cache_dir", lambda: tmp_path / "cache" / "onnx")

    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(embedder_mod, "_chroma_download", offline)
    e, msg = load_embedder(str(tmp_path / "nowhere"))
    assert e is None
    assert msg.startswith("no embedding model: lexical-only retrieval")
    assert "nowhere" in msg and "network unreachable" in msg and "memory.model_dir" in msg
    e, msg = load_embedder(None, download=False)
    assert e is None and "lexical-only" in msg


def test_a_broken_model_file_is_a_message_not_an_exception(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not a model")
    (bad / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(embedder_mod, "chroma_cache_dir", lambda: tmp_path / "empty")
    e, msg = load_embedder(bad, download=False)
    assert e is None and "failed to load" in msg


def test_chroma_cache_is_the_second_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(embedder_mod, "chroma_cache_dir", lambda: Path(MODEL_DIR))
    e, msg = load_embedder(str(tmp_path / "missing"), download=False)
    assert e is not None and e.source.startswith("chroma cache") and "missing" in msg


def test_piece_counter_counts_each_word_once_and_equals_the_tokenizer(monkeypatch):
    emb = embedder()
    count = emb.token_counter()
    lines = ["def load_embedder(model_dir, download=True):  # 0x7ffe12ab", "    return Embedder(d, source=f'{d}')",
             "naïve café résumé", "[CLS] a [SEP] b", "g\x08gi\x08it\x08t r\x08re", "\tx = y[0] + z['k'] ~ `q`"]
    for ln in lines:
        assert count(ln) == emb.count_tokens(ln), ln
    calls = []
    real = emb.count_tokens
    monkeypatch.setattr(emb, "count_tokens", lambda t: calls.append(t) or real(t))
    assert count("return Embedder(d)") == real("return Embedder(d)")
    assert calls == []  # words counted before: no call into the tokenizer (one a line cost ~4 ms a 12 KB result)


def test_an_unfolded_model_gives_the_same_vectors_in_less_memory():
    """``fold=False`` (the embedding worker's) keeps the int8 weights as they are: the same vectors within
    float noise, and once warm and through a full batch (32 texts of 256 pieces) ~70 MB less resident (each
    in a process of its own)."""
    code = ("import sys, numpy as np\n"
            "from contextwarden.memory.embedder import Embedder\n"
            "def pss(): return int(next(l for l in open('/proc/self/smaps_rollup') if l.startswith('Pss:')).split()[1])\n"
            "before = pss()\n"
            f"e = Embedder({str(MODEL_DIR)!r}, threads=1, fold=sys.argv[1] == 'fold')\n"
            "e.warm()\n"
            "e(['word ' * 300] * 32)\n"
            "grown = pss() - before\n"
            f"np.save(sys.argv[2], e({TEXTS!r}))\n"
            "print(grown)\n")
    grown, vecs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for how in ("fold", "keep"):
            out = subprocess.run([sys.executable, "-c", code, how, f"{tmp}/{how}.npy"], capture_output=True, text=True,
                                 timeout=120, check=True)
            grown[how] = int(out.stdout.split()[-1]) / 1024
            vecs[how] = np.load(f"{tmp}/{how}.npy")
    assert np.allclose(vecs["keep"], vecs["fold"], atol=1e-5)
    assert grown["fold"] - grown["keep"] > 40, grown  # MB (measured: 72)
