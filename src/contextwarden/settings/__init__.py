"""Profiles: pydantic-settings models loaded from ``profiles/*.yaml`` with env overrides.

Precedence: env ``CONTEXTWARDEN_<SECTION>__<KEY>`` > the profile YAML (and what it ``extends``) >
defaults. Unknown keys, in YAML or env, are an error that names the key.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

import contextwarden.profiles as bundled  # data package mapped from the repo's profiles/

from .base import Section
from .compression import CompressionSection
from .context import BudgetSection, ClearingSection, CompactionSection, StripSection, TokensSection
from .gateway import MetricsSection, StateSection
from .memory import MemorySection, TaggingSection
from .pipeline import PipelineSection
from .proxy import ProxySection
from .server import LogSection, ServerSection

ENV_PREFIX = "CONTEXTWARDEN_"
# Variables with the prefix that are not profile settings.
NON_SETTING_ENV = {"HOME", "PROFILE", "TRACE", "PLUGINS", "SHARED", "KEY", "CENSUS", "CENSUS_S", "TRACEMALLOC"}  # census.py: debugging


class SettingsError(ValueError):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      use_attribute_docstrings=True, validate_assignment=True)

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

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


def profiles_dirs(home: Path | None = None) -> list[Path]:
    dirs = []
    if home is not None:
        dirs.append(Path(home) / "profiles")
    dirs.append(Path(bundled.__file__).parent)
    return dirs


def available_profiles(home: Path | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(profiles_dirs(home)):
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                found[p.stem] = p
    return found


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


def check_env(environ: os._Environ | dict | None = None) -> None:
    """Unknown ``CONTEXTWARDEN_<SECTION>__<KEY>`` variables are errors, not silently ignored."""
    for parts, var in _env_settings(os.environ if environ is None else environ).items():
        if len(parts) == 1:
            if parts[0] in Settings.model_fields:
                continue
            raise SettingsError(f"unknown setting in environment: {var}")
        if parts[0] not in Settings.model_fields:
            raise SettingsError(f"unknown setting in environment: {var} (no section {parts[0]!r})")
        section = _section(parts[0])
        if section is not None and parts[1] not in section.model_fields:
            raise SettingsError(f"unknown setting in environment: {var} (no key {parts[1]!r} in {parts[0]})")


def _env_settings(environ) -> dict[tuple[str, ...], str]:
    """The setting each ``CONTEXTWARDEN_`` variable sets: its path (``("compaction", "soft_threshold")``)
    -> the variable's name."""
    out = {}
    for var in environ:
        if var.startswith(ENV_PREFIX) and var[len(ENV_PREFIX):].upper() not in NON_SETTING_ENV:
            out[tuple(var[len(ENV_PREFIX):].lower().split("__"))] = var
    return out


def _env_var_for(loc: tuple, env: dict[tuple[str, ...], str]) -> str | None:
    """The variable whose value an error at ``loc`` is about: the environment wins over the file, so a
    variable that sets ``loc`` or a parent of it (a JSON object or list) is where the bad value came from."""
    parts = tuple(str(x).lower() for x in loc)
    for n in range(len(parts), 0, -1):
        if parts[:n] in env:
            return env[parts[:n]]
    return None


def _format_error(e: ValidationError, source: str, environ=None) -> str:
    env = _env_settings(os.environ if environ is None else environ)
    from_file, from_env = [], []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(str(err["loc"][-1]), _fields_at(err["loc"]))
        var = _env_var_for(err["loc"], env)
        if var is None:
            from_file.append(f"  {loc}: {msg}")
        else:
            from_env.append(f"  {var}" + ("" if var.lower() == ENV_PREFIX.lower() + loc.replace(".", "__") else f" ({loc})")
                            + f": {msg}")
    out = []
    if from_env:
        out += ["invalid settings in the environment:", *from_env]
    if from_file:
        out += [f"invalid settings in {source}:", *from_file]
    return "\n".join(out)


def _source_error(e: SourceError, environ=None) -> str:
    """pydantic-settings could not decode a variable's value (a list or object needs JSON)."""
    environ = os.environ if environ is None else environ
    bad = []
    for path, var in _env_settings(environ).items():
        try:
            json.loads(environ[var])
        except ValueError:
            section = _section(path[0]) if len(path) > 1 else None
            field = section.model_fields.get(path[1]) if section is not None else Settings.model_fields.get(path[0])
            kind = getattr(getattr(field, "annotation", None), "__origin__", None)
            if kind in (list, dict):
                example = '["memory"]' if kind is list else '{"memory": 150}'
                bad.append(f"  {var}: not valid JSON (a {kind.__name__} is written as JSON, e.g. {example})")
    return "invalid settings in the environment:\n" + ("\n".join(bad) if bad else f"  {e}")


def load_settings(profile: str | os.PathLike | None = "default", home: Path | None = None,
                  overrides: dict[str, Any] | None = None, environ: dict | None = None) -> Settings:
    """Load a profile by name or path; ``overrides`` (runtime changes from the TUI) win over the file."""
    data: dict[str, Any] = {}
    source = "defaults"
    if profile:
        path = resolve_profile(profile, home)
        data = _read_profile(path, home)
        source = str(path)
    if overrides:
        data = _deep_merge(data, overrides)
    check_env(environ)
    try:
        return Settings(**data)
    except ValidationError as e:
        raise SettingsError(_format_error(e, source, environ)) from None
    except SourceError as e:
        raise SettingsError(_source_error(e, environ)) from None


__all__ = ["Settings", "SettingsError", "Section", "load_settings", "available_profiles", "resolve_profile", "check_env"]
