"""The engine: contextwarden's request path in a process of its own, beside mitmdump's.

mitmdump's process keeps what must be there (the connections, TLS, relaying every byte, the listen
address checks, its own output) and a small link (``contextwarden.addons.enginelink``) that hands each
LLM API flow's hooks to the engine and applies what comes back. The engine is a mitmproxy master
without a proxy server: it runs the same addons (``addons/chain.py``) on a mirror of each flow. Why:
the stages, the token counting, the answers' reading and the state writes hold an interpreter lock;
in mitmdump's process every relayed byte waited behind them. Two processes, two locks.

    server   the engine process (``python -m contextwarden.engine FD``); the frames on the socket pair
             between the two processes (length-prefixed pickles) are ``core/frames.py``
"""
