"""Load an experiment: YAML with ``_base_`` inheritance, dotted overrides, validation.

Merge rules (no ``_delete_`` needed): dicts merge key by key; a list replaces;
a dict whose ``type`` differs from the base's ``type`` replaces the base dict
instead of being merged into something half-valid.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunedet.config.schema import root_model

BUILTIN_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file or dotted key."""


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or a built-in config name such as ``retinanet/demo``."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIG_DIR / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if builtin.is_file():
        return builtin
    known = sorted(
        str(p.relative_to(BUILTIN_CONFIG_DIR).with_suffix(""))
        for p in BUILTIN_CONFIG_DIR.rglob("*.yaml")
    )
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config '{name}' not found: no such file and no built-in config{hint} (built-in: {', '.join(known)})"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: Any, update: Any) -> Any:
    """Deep-merge ``update`` into a copy of ``base`` (see the module's merge rules)."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return copy.deepcopy(update)
    if "type" in update and "type" in base and update["type"] != base["type"]:
        return copy.deepcopy(update)
    merged = copy.deepcopy(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and resolve its ``_base_`` files (relative to it), deepest first."""
    path = resolve_config_path(path) if not _chain else Path(path)
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}")
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(
                f"{path}: _base_ file '{base}' not found (looked in {base_path.parent})"
            )
        merged = merge(merged, load_raw(base_path, (*_chain, path)))
    return merge(merged, data)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.path=value")
    key, text = override.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override '{override}': '{where}' is a value, not a section")
        node = child
    last = parts[-1]
    if last == "type" and node.get("type") not in (None, value):
        node.clear()  # a type change replaces the component (its old parameters do not apply)
    node[last] = merge(node[last], value) if last in node else value


def validate(raw: dict[str, Any], source: str = "config") -> BaseModel:
    model = root_model()
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        errors = error.errors()
        # An unknown ``type:`` explains every other error of its component: report it alone.
        type_errors = [
            e
            for e in errors
            if e["type"].startswith("union_tag")
            or (e["type"] == "literal_error" and e["loc"][-1] == "type")
        ]
        lines = [describe_error(model, raw, e) for e in (type_errors or errors)]
        more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if len(lines) > 1 else ""
        raise ConfigError(f"{source}: {lines[0]}{more}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """Load, merge, override and validate an experiment config."""
    raw = load_raw(path)
    for override in overrides:
        apply_override(raw, override)
    return validate(raw, source=str(path))


def config_to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML; loading it alone reproduces the run."""
    return yaml.safe_dump(to_plain(cfg.model_dump(mode="json")), sort_keys=False)


def to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


# --- error messages ---------------------------------------------------------------------------


def _union_members(annotation: Any) -> dict[str, type[BaseModel]] | None:
    """For a discriminated union of component models: tag -> model."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        candidates = [annotation]
    elif typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        candidates = []
        for arg in typing.get_args(annotation):
            inner = _union_members(arg)
            if inner:
                candidates.extend(inner.values())
    else:
        return None
    members = {}
    for candidate in candidates:
        field = candidate.model_fields.get("type")
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            members[typing.get_args(field.annotation)[0]] = candidate
    return members or None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Dotted path parts (discriminator tags removed) and the model holding the last element."""
    path: list[str] = []
    current: Any = model
    holder: type[BaseModel] | None = model
    i = 0
    while i < len(loc):
        part = loc[i]
        if isinstance(current, type) and issubclass(current, BaseModel):
            holder = current
            field = current.model_fields.get(str(part))
            path.append(str(part))
            if field is None:
                return path + [str(p) for p in loc[i + 1 :]], holder
            current = field.annotation
            i += 1
            continue
        members = _union_members(current)
        if members and str(part) in members and len(members) > 1:
            current = members[str(part)]
            i += 1
            continue
        if members and len(members) == 1:
            current = next(iter(members.values()))
            continue
        origin = typing.get_origin(current)
        if origin in (list, tuple) and isinstance(part, int):
            path[-1] = f"{path[-1]}[{part}]"
            args = typing.get_args(current)
            current = args[0] if args else Any
            i += 1
            continue
        if origin in (typing.Union, __import__("types").UnionType):
            non_none = [a for a in typing.get_args(current) if a is not type(None)]
            current = non_none[0] if len(non_none) == 1 else Any
            if current is Any:
                path.extend(str(p) for p in loc[i:])
                return path, None
            continue
        path.extend(str(p) for p in loc[i:])
        return path, None
    return path, holder


def _component_kind(holder: type[BaseModel] | None, path: list[str]) -> str | None:
    if holder is None or not path:
        return None
    field = holder.model_fields.get(path[-1].split("[")[0])
    if field is None:
        return None
    annotation = field.annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    members = _union_members(annotation) or {}
    kinds = {getattr(m, "registry_kind", None) for m in members.values()} - {None}
    return kinds.pop().replace("_", " ") if len(kinds) == 1 else None


def describe_error(model: type[BaseModel], raw: dict[str, Any], error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    path, holder = _walk(model, loc)
    dotted = ".".join(path) or "<root>"
    if kind == "extra_forbidden" and holder is not None:
        allowed = sorted(holder.model_fields)
        close = difflib.get_close_matches(path[-1], allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{dotted}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error.get("ctx", {})
        tag = ctx.get("tag")
        expected = [
            t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()
        ]
        component = _component_kind(holder, path) or (path[-1] if path else "component")
        if kind == "union_tag_not_found":
            return f"{dotted}.type: missing (choices: {', '.join(expected)})"
        close = difflib.get_close_matches(str(tag), expected, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{dotted}.type: unknown {component} '{tag}'{hint} (choices: {', '.join(expected)})"
    if kind == "literal_error" and path and path[-1] == "type":
        expected = [
            t.strip(" '")
            for t in str(error.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")
            if t.strip()
        ]
        component = getattr(holder, "registry_kind", path[-2] if len(path) > 1 else "type").replace(
            "_", " "
        )
        close = difflib.get_close_matches(str(error.get("input")), expected, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{dotted}: unknown {component} {error.get('input')!r}{hint} (choices: {', '.join(expected)})"
    message = error["msg"]
    if kind == "missing":
        return f"{dotted}: required key is missing"
    return f"{dotted}: {message} (got {error.get('input')!r})"
