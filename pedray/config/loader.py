"""Loads YAML recipes into typed configs, applies dotted overrides, and names what is wrong."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pedray.config.schema import Recipe
from pedray.config.serve import MOVED


class ConfigError(ValueError):
    """A recipe key or value that is not allowed; the message names the key, the source and the rule."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against type `tp`, converting where YAML is looser (int for a float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    fail = ConfigError(f"{source}: key '{key}' has value {value!r}; allowed: {_describe(tp)}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        if value in args:
            return value
        raise fail
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail
        return build(tp, value, source, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return {str(k): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise fail


def build(cls: type, raw: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Construct dataclass `cls` from a mapping, rejecting unknown keys and wrong values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted, source)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        where = prefix or cls.__name__
        raise ConfigError(f"{source}: invalid value under '{where}': {err}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `a.b=1` strings into a nested mapping; values are parsed as YAML scalars or lists."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, text = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(text) if text.strip() else None)
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides.

    Args:
        path: YAML file; it may name another recipe to start from with `base: other.yaml`.
        overrides: `key.path=value` strings or an already nested mapping.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        raw = read_yaml(Path(path))
        source = str(path)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        raw = merge(raw, extra)
        source += " (with overrides)"
    _check_stage_keys(raw, source)
    _check_moved_serve_keys(raw, source)
    return build(Recipe, raw, source)


def _check_moved_serve_keys(raw: dict[str, Any], source: str) -> None:
    """A flat `serve` key of earlier versions fails with its new place (pedray.config.serve.MOVED)."""
    section = raw.get("serve")
    for key in section if isinstance(section, dict) else ():
        if key in MOVED:
            raise ConfigError(f"{source}: 'serve.{key}' is now 'serve.{MOVED[key]}' (the serve section is "
                              "split into http, requests, replicas and vllm)")


def _check_stage_keys(raw: dict[str, Any], source: str) -> None:
    """A stage setting given for a stage that does not use it fails like any other wrong key (its default
    value passes: a whole recipe written back, as `to_dict` does, carries every field)."""
    from pedray.config.schema import STAGE_ONLY_KEYS, StageConfig

    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return
    defaults = StageConfig()
    for stage, settings in stages.items():
        for key, value in (settings or {}).items() if isinstance(settings, dict) else ():
            users = STAGE_ONLY_KEYS.get(key)
            if users and stage not in users and value != getattr(defaults, key):
                raise ConfigError(f"{source}: 'stages.{stage}.{key}' is not used by {stage}; "
                                  f"only {', '.join(users)} takes '{key}'")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one recipe file, following `base:` links relative to the file."""
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level")
    base = raw.pop("base", None)
    if base:
        raw = merge(read_yaml(path.parent / base), raw)
    return raw


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested mapping of a recipe (for manifests and Ray configs)."""
    return dataclasses.asdict(recipe)
