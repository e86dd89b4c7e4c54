"""Long-term memory: what was compacted away comes back when it is relevant again.

Storage (``ids``, ``items``, ``secrets``, ``chunking``, ``embedder``, ``store``, ``ingest``): completed
turns are redacted, chunked, embedded with a local ONNX model and kept in Chroma, per tenant.
Retrieval (``tagger``, ``lexical`` and the ``memory`` stage in ``contextwarden.plugins.memory``): hybrid
vector + BM25 ranking fused with RRF, injected cache-safely. Nothing here is imported by the proxy path
until the memory stage is configured.
"""
