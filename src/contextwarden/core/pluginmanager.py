"""Finding and loading plugins: entry points, the drop-in folder, and the trace switch."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points as eps
from pathlib import Path
from typing import Any

import pluggy

from .. import hookspecs
from ..settings import SettingsError
from ..settings.pipeline import PipelineSection

ENTRY_POINT_GROUP = "contextwarden"


@dataclass
class PluginInfo:
    name: str
    source: str  # "entry point <dist>", or the file path of a drop-in
    hooks: list[str]
    is_stage: bool


def _load_dropins(pm: StagePlugins, folder: Path) -> None:
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        modname = f"contextwarden_dropin_{path.stem}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            pm.cw_errors[path.stem] = f"{type(e).__name__}: {e}"
            continue
        sys.modules[modname] = mod
        name = getattr(mod, "name", None) or getattr(mod, "NAME", None) or path.stem
        pm.register(mod, name=name)
        pm.cw_sources[name] = str(path)


class StagePlugins(pluggy.PluginManager):
    """pluggy's manager, and what loading the plugins found."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.cw_sources: dict[str, str] = {}  # plugin name -> where it came from
        self.cw_errors: dict[str, str] = {}  # plugin name -> why it could not be loaded
        self.cw_trace: Callable[..., None] | None = None  # the trace writer, when tracing


def make_plugin_manager(plugins_dir: str | os.PathLike | None = None, entry_points: bool = True,
                        extra: list[tuple[str, object]] | None = None) -> StagePlugins:
    pm = StagePlugins("contextwarden")
    pm.add_hookspecs(hookspecs)
    if entry_points:
        for ep in eps(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as e:  # a broken plugin must not stop the proxy: it is reported and left out
                pm.cw_errors[ep.name] = f"{type(e).__name__}: {e}"
                continue
            pm.register(plugin, name=ep.name)
            pm.cw_sources[ep.name] = f"entry point {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")
    for name, plugin in extra or []:
        pm.register(plugin, name=name)
        pm.cw_sources[name] = "registered in code"
    if plugins_dir:
        _load_dropins(pm, Path(plugins_dir).expanduser())
    if os.environ.get("CONTEXTWARDEN_TRACE") not in (None, "", "0"):
        enable_trace(pm)
    return pm


def enable_trace(pm: StagePlugins, write=None) -> None:
    write = write or (lambda *a: print(*a, file=sys.stderr, end=""))
    pm.trace.root.setwriter(write)
    pm.enable_tracing()
    pm.cw_trace = write


def stage_order(pm: StagePlugins, order: list[str], disabled: list[str]) -> list[tuple[str, Callable[..., Any]]]:
    """(name, function) of every enabled request stage, in the profile's order, unlisted ones last."""
    impls = {i.plugin_name: i.function for i in pm.hook.cw_request.get_hookimpls()}
    names = [n for n in order if n in impls]
    # get_hookimpls lists in reverse call order (LIFO); load order is its reverse
    names += [n for n in reversed(list(impls)) if n not in names]
    return [(n, impls[n]) for n in names if n not in disabled]


def check_stage_names(pm: StagePlugins, pipeline) -> None:
    """Every name in ``pipeline.order`` and ``pipeline.disabled`` is a loaded stage; an unknown one is a
    settings error that names it (a typo there would otherwise leave a stage off, or on, silently)."""
    stages = {i.plugin_name for i in pm.hook.cw_request.get_hookimpls()}
    problems = []
    for key in ("order", "disabled"):
        for name in getattr(pipeline, key):
            if name in stages:
                continue
            if name in pm.cw_errors:
                why = f"it failed to load: {pm.cw_errors[name]}"
            elif pm.get_plugin(name) is not None:
                why = "that plugin has no cw_request hook"
            else:
                why = "no plugin of that name is loaded (a drop-in folder goes in --plugins / cw_plugins)"
            problems.append(f"  pipeline.{key}: unknown stage {name!r}: {why}")
    if problems:
        known = ", ".join(sorted(stages)) or "none"
        raise SettingsError("invalid settings:\n" + "\n".join(problems) + f"\n  known stages: {known}")


def order_warnings(pm: StagePlugins, pipeline) -> list[str]:
    """Built-in stages that a profile's ``pipeline.order`` leaves out while they are on: they still run,
    but after every listed stage (a copied order from before a stage existed moves it silently)."""
    stages = {i.plugin_name for i in pm.hook.cw_request.get_hookimpls()}
    left_out = [n for n in PipelineSection.model_fields["order"].default
                if n in stages and n not in pipeline.order and n not in pipeline.disabled]
    if not left_out:
        return []
    return [f"pipeline.order leaves out the built-in stage{'s' * (len(left_out) > 1)} {', '.join(left_out)}: "
            f"{'they run' if len(left_out) > 1 else 'it runs'} after {pipeline.order[-1] if pipeline.order else 'nothing'}, "
            "last; list them where they belong or put them in pipeline.disabled"]


def describe(pm: StagePlugins, order: list[str] | None = None, disabled: list[str] | None = None) -> list[PluginInfo]:
    hooknames = [n for n in dir(hookspecs) if n.startswith("cw_")]
    stages = [n for n, _ in stage_order(pm, order or [], [])]
    infos = []
    for name, _plugin in pm.list_name_plugin():
        hooks = [h for h in hooknames if any(i.plugin_name == name for i in getattr(pm.hook, h).get_hookimpls())]
        infos.append(PluginInfo(name=name, source=pm.cw_sources.get(name, "?"), hooks=hooks, is_stage=name in stages))
    infos.sort(key=lambda i: (not i.is_stage, stages.index(i.name) if i.name in stages else 0, i.name))
    return infos
