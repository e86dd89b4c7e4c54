"""Profiles: pydantic models loaded from ``profiles/*.yaml`` with env overrides.

Precedence: env ``CONTEXTWARDEN_<SECTION>__<KEY>`` > the profile YAML (and what it ``extends``) >
defaults. Unknown keys, in YAML or env, are an error that names the key.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, get_origin

import yaml
from pydantic import ValidationError

import contextwarden.profiles as bundled  # data package mapped from the repo's profiles/

from .base import Section
from .context import (
    BudgetSection,
    ClearingSection,
    CompactionSection,
    CompressionSection,
    PriceSection,
    StripSection,
    TokensSection,
)
from .memory import MemorySection, TaggingSection
from .pipeline import PipelineSection
from .proxy import LogSection, MetricsSection, ProxySection, ServerSection, StateSection

ENV_PREFIX = "CONTEXTWARDEN_"
# Variables with the prefix that are not profile settings.
NON_SETTING_ENV = {"HOME", "PROFILE", "TRACE", "PLUGINS", "SHARED", "KEY", "CREDENTIAL"}


class SettingsError(ValueError):
    pass


class Settings(Section):

    name: str = "default"
    """The profile's name."""

    description: str = ""
    """What the profile is for."""

    proxy: ProxySection = ProxySection()
    pipeline: PipelineSection = PipelineSection()
    tokens: TokensSection = TokensSection()
    strip: StripSection = StripSection()
    tagging: TaggingSection = TaggingSection()
    memory: MemorySection = MemorySection()
    clearing: ClearingSection = ClearingSection()
    compaction: CompactionSection = CompactionSection()
    compression: CompressionSection = CompressionSection()
    budget: BudgetSection = BudgetSection()
    server: ServerSection = ServerSection()
    log: LogSection = LogSection()
    state: StateSection = StateSection()
    metrics: MetricsSection = MetricsSection()
    plugins: dict[str, dict[str, Any]] = {}
    """Settings of third-party stages, by stage name; each stage validates its own."""
    prices: dict[str, PriceSection] = {}
    """List prices by model-name prefix (``claude-opus-5``: that model, its dated and suffixed names), looked up
    before the built-in table: a model the table does not know is billed in tokens only."""


def available_profiles(home: Path | None = None) -> dict[str, Path]:
    """The profiles by name: the bundled ones, then ``home/profiles`` (which win)."""
    dirs = [Path(bundled.__file__).parent] + ([Path(home) / "profiles"] if home is not None else [])
    return {p.stem: p for d in dirs if d.is_dir() for p in sorted(d.glob("*.yaml"))}


def resolve_profile(profile: str | os.PathLike, home: Path | None = None) -> Path:
    p = Path(profile).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in str(profile):
        if not p.is_file():
            raise SettingsError(f"profile file not found: {p}")
        return p
    found = available_profiles(home)
    if str(profile) not in found:
        raise SettingsError(f"unknown profile {profile!r}{_did_you_mean(str(profile), found)}; "
                            f"available: {', '.join(sorted(found))}")
    return found[str(profile)]


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section(name: Any) -> type[Section] | None:
    """The model of a top-level section (``compaction``...); None for a plain field or an unknown name."""
    ann = getattr(Settings.model_fields.get(str(name)), "annotation", None)
    return ann if isinstance(ann, type) and issubclass(ann, Section) else None


def _fields_at(loc: tuple) -> dict:
    """The keys allowed where ``loc`` points (its last part the key): a section's fields, or the top level's."""
    if len(loc) == 1:
        return Settings.model_fields
    section = _section(loc[0]) if len(loc) == 2 else None
    return section.model_fields if section is not None else {}


def _load_yaml(path: Path) -> Any:
    """The file's YAML; a syntax error is one line naming the file and the line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise SettingsError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: invalid YAML: {e}") from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_profile(path: Path, home: Path | None, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise SettingsError(f"profile extends itself: {' -> '.join(map(str, seen + (path,)))}")
    data = _load_yaml(path) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a profile is a mapping of sections")
    parent = data.pop("extends", None)
    own_name = data.get("name", path.stem)
    if parent:
        data = _deep_merge(_read_profile(resolve_profile(parent, home), home, seen + (path,)), data)
    data["name"] = own_name
    return data


def _env(environ) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The settings the ``CONTEXTWARDEN_<SECTION>__<KEY>`` variables set (a list or dict written as JSON),
    and the variable that sets each path."""
    data: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var[len(ENV_PREFIX):].upper() in NON_SETTING_ENV:
            continue
        path = tuple(var[len(ENV_PREFIX):].lower().split("__"))
        names[path] = var
        kind = get_origin(getattr(_fields_at(path).get(path[-1]), "annotation", None))
        if kind in (list, dict):
            try:
                value = json.loads(value)
            except ValueError:
                example = '["memory"]' if kind is list else '{"memory": 150}'
                raise SettingsError("invalid settings in the environment:\n"
                                    f"  {var}: not valid JSON (a {kind.__name__} is written as JSON, e.g. {example})") from None
        d = data
        for part in path[:-1]:
            d = d[part] if isinstance(d.get(part), dict) else d.setdefault(part, {})
        d[path[-1]] = value
    return data, names


def _format_error(e: ValidationError, source: str, env: dict[tuple[str, ...], str]) -> str:
    """Each error blamed on the variable that set the value (the environment wins over the file), else the file."""
    from_file, from_env = [], []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg, unknown = err["msg"], err["type"] == "extra_forbidden"
        if unknown:
            msg = "unknown key" + _did_you_mean(str(err["loc"][-1]), _fields_at(err["loc"]))
        parts = tuple(str(x).lower() for x in err["loc"])
        var = next((v for path, v in env.items() if parts[:len(path)] == path or path[:len(parts)] == parts), None)
        if var is None:
            from_file.append(f"  {loc}: {msg}")
        else:
            named = var.lower() == ENV_PREFIX.lower() + loc.replace(".", "__") and not unknown
            from_env.append(f"  {var}" + ("" if named else f" ({loc})") + f": {msg}")
    out = []
    if from_env:
        out += ["invalid settings in the environment:", *from_env]
    if from_file:
        out += [f"invalid settings in {source}:", *from_file]
    return "\n".join(out)


def load_settings(profile: str | os.PathLike | None = "default", home: Path | None = None,
                  overrides: dict[str, Any] | None = None, environ: dict | None = None) -> Settings:
    """Load a profile by name or path; ``overrides`` (runtime changes from the TUI) win over the file,
    the environment over both."""
    data: dict[str, Any] = {}
    source = "defaults"
    if profile:
        path = resolve_profile(profile, home)
        data = _read_profile(path, home)
        source = str(path)
    env, names = _env(os.environ if environ is None else environ)
    try:
        return Settings(**_deep_merge(_deep_merge(data, overrides or {}), env))
    except ValidationError as e:
        raise SettingsError(_format_error(e, source, names)) from None


__all__ = ["Settings", "SettingsError", "Section", "load_settings", "available_profiles", "resolve_profile"]
