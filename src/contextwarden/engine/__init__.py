"""The engine: contextwarden's request path in a process of its own, beside mitmdump's (``server``)."""
