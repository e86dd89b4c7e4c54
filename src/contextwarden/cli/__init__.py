"""The ``contextwarden`` command. Each module in this package adds its subcommands through
``register(subparsers)``; the proxy path never imports this package.

COMMANDS names every subcommand, the module that registers it and its one-line help: ``--help`` lists
them without importing any, and only the chosen command's module is imported (:class:`_Commands`, the
package's one lazy import), so a command loads Textual, Chroma or mitmproxy only when it uses them."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from contextwarden import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("profiles", "print a profile's effective settings (after extends and env overrides)"),
    "demo": ("demo", "try it locally: a stand-in upstream, the proxy and a scripted session"),
    "doctor": ("doctor", "check the CA, Python and mitmproxy, tokenizers, the embedding model and the data dir"),
    "eval": ("eval", "memory evaluation: LoCoMo / LongMemEval replays through the real pipeline"),
    "mcp": ("mcp", "run the MCP server (stdio): recall, search and remember for agents"),
    "memory": ("memory", "export, import, prune or delete long-term memory"),
    "plugins": ("plugins", "list stages in order, their hooks and where each was loaded from"),
    "policy": ("policy", "the learned clearing policy per tenant: show, reset"),
    "profiles": ("profiles", "list the profiles"),
    "recall": ("recall", "print what a memory id names (a cleared result, a compacted span), verbatim"),
    "replay": ("replay", "replay recorded sessions offline and compare tokens and simulated cost"),
    "run": ("run", "start the proxy on 127.0.0.1:8080 with a profile"),
    "search": ("search", "search long-term memory (hybrid: vector + lexical)"),
    "session": ("session", "a session's context versions: list, show, rollback, pin, unpin, compact"),
    "sessions": ("memory", "list the sessions in long-term memory"),
    "stats": ("memory", "long-term memory totals: items, tenants, sessions, size, model"),
    "tui": ("tui", "watch live traffic, tags, compactions and savings; steer sessions"),
}


class Fail(Exception):
    """A command that cannot go on: :func:`main` prints the message to stderr and returns ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Commands(argparse._SubParsersAction):
    """Subparsers that stand for COMMANDS until one is chosen; then its module registers the real ones."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] in COMMANDS:
            module = importlib.import_module(f"{__name__}.{COMMANDS[values[0]][0]}")
            module.register(self)
        super().__call__(parser, namespace, values, option_string)

    def add_parser(self, name, **kwargs):
        if self._name_parser_map.pop(name, None) is not None:  # the stand-in: listed already
            kwargs.pop("help", None)
        return super().add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contextwarden", description="Manage LLM conversation context on the wire.")
    parser.add_argument("--version", action="version", version=f"contextwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=_Commands)
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Fail as e:
        print(e, file=sys.stderr)
        return e.code
    except BrokenPipeError:
        # the reader went away (``contextwarden search ... | head``): not an error of ours; stdout is
        # pointed at devnull so that the interpreter's own flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
