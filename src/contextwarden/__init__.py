"""contextwarden: manages an LLM conversation's context on the wire, as a mitmproxy addon suite."""

import os

__version__ = "0.1.0"

# one BLAS thread in every process of the product (set before numpy loads; a user's own setting wins): its matrix
# products are small and on a request's clock, and a second BLAS thread waits for a core on a busy machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .hookspecs import hookimpl  # noqa: E402  (the marker plugins import)

__all__ = ["hookimpl", "__version__"]
