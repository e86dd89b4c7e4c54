"""The layout shows the architecture: the folders of src/contextwarden/ (and addons/, plugins/, tui/) form
layers, and no folder imports one above it: the folder-level import graph has no loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "contextwarden"
OUTSIDE = ("addons", "plugins", "tui")  # mapped under contextwarden by the wheel


def _room(parts: list[str]) -> str | None:
    """The folder (or top-level module) a dotted module name under ``contextwarden`` belongs to."""
    if len(parts) < 2:
        return None
    return parts[1] + ("/" if parts[1] in OUTSIDE or (PKG / parts[1]).is_dir() else ".py")


def _edges() -> dict[str, dict[str, str]]:
    """room -> {imported room: one file:line that imports it}."""
    out: dict[str, dict[str, str]] = {}
    files = [(p, ["contextwarden", *p.relative_to(PKG).with_suffix("").parts]) for p in PKG.rglob("*.py")]
    for top in OUTSIDE:
        files += [(p, ["contextwarden", top, *p.relative_to(ROOT / top).with_suffix("").parts])
                  for p in (ROOT / top).rglob("*.py")]
    for path, mod in files:
        here = _room(mod)
        pkg = mod[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1] if node.level else []
                names = [base + (node.module.split(".") if node.module else [])]
                if names[0] == ["contextwarden"]:  # from contextwarden import x
                    names = [["contextwarden", a.name] for a in node.names]
            else:
                continue
            for parts in names:
                if parts[0] != "contextwarden":
                    continue
                there = _room(parts)
                if there and there != here and (there.endswith("/") or (PKG / there).exists()):
                    out.setdefault(here, {}).setdefault(there, f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


def _loops(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                found.append(sorted([v, *comp]))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_folder_imports_one_above_it():
    edges = _edges()
    loops = _loops(edges)
    tied = {f"{a} -> {b}": where for loop in loops for a in loop for b, where in edges.get(a, {}).items()
            if b in loop}
    assert not loops, f"folders that import each other (around a loop): {loops}\n{tied}"


def test_the_core_does_not_import_the_request_path_or_the_stages():
    edges = _edges()
    for low, high in [("wire/", "memory/"), ("core/", "request/"), ("request/", "sessionctl/"),
                      ("memory/", "offline/"), ("plugins/", "request/"), ("addons/", "engine/")]:
        assert high not in edges.get(low, {}), f"{low} imports {high}: {edges[low][high]}"
