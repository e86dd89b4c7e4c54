"""contextwarden: manages an LLM conversation's context on the wire, as a mitmproxy addon suite."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (the marker plugins import)

__all__ = ["hookimpl", "__version__"]
