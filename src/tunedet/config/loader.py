"""Load an experiment: YAML with ``_base_`` inheritance, dotted overrides, validation.

Merge rules (no ``_delete_`` needed): dicts merge key by key; a list replaces;
a dict whose ``type`` differs from the base's ``type`` replaces the base dict
instead of being merged into something half-valid.

``_base_`` names a YAML file relative to the file that names it, or a built-in
config (``retinanet/demo``). Relative data paths (``ann_file``, ``img_dir``,
``root``, ``label_dir`` of ``data.train``/``data.val``) resolve against the folder
of the YAML file that names them, so a config runs from any directory; where
nothing exists there but the path exists from the current directory, that one is
used (configs written for the repository root keep working). The built-in
recipes' ``data/coco/...`` paths stay relative to the current directory.
``data: PATH`` in a file, or the override ``data=PATH``, reads an ultralytics
dataset YAML or a dataset folder (data/dataset_files.py).

Resource limits: a YAML document that expands (through aliases) to more than
``MAX_YAML_VALUES`` values, or nests deeper than ``MAX_NESTING`` levels, is refused
in one line before anything walks it.
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
MAX_YAML_VALUES = 100_000  # a config has a few hundred; an alias bomb has billions
MAX_NESTING = 50  # levels of mappings/lists in a YAML or JSON document
DATA_PATH_KEYS = ("ann_file", "img_dir", "root", "label_dir")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file or dotted key."""


def builtin_config_names() -> list[str]:
    return sorted(
        str(p.relative_to(BUILTIN_CONFIG_DIR).with_suffix(""))
        for p in BUILTIN_CONFIG_DIR.rglob("*.yaml")
    )


def _builtin_path(name: str) -> Path | None:
    builtin = BUILTIN_CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    return builtin.resolve() if builtin.is_file() else None


def _builtin_hint(name: str) -> str:
    close = difflib.get_close_matches(str(name), builtin_config_names(), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or a built-in config name such as ``retinanet/demo``."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config '{name}' is a directory, not a YAML file")
    builtin = _builtin_path(str(name))
    if builtin is not None:
        return builtin
    raise ConfigError(
        f"config '{name}' not found: no such file and no built-in config{_builtin_hint(str(name))} "
        f"(built-in: {', '.join(builtin_config_names())})"
    )


def check_size(data: Any, source: str) -> None:
    """Refuse a parsed document that nests deeper than ``MAX_NESTING`` levels or expands
    to more than ``MAX_YAML_VALUES`` values, counting an alias once per use (the
    billion-laughs document is tiny as YAML, and billions of values once walked)."""
    sizes: dict[int, int] = {}

    def count(node: Any, depth: int) -> int:
        if not isinstance(node, dict | list):
            return 1
        if depth >= MAX_NESTING:
            raise ConfigError(f"{source}: nested deeper than {MAX_NESTING} levels; refused")
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        for child in node.values() if isinstance(node, dict) else node:
            total += count(child, depth + 1)
            if total > MAX_YAML_VALUES:
                raise ConfigError(
                    f"{source}: expands to more than {MAX_YAML_VALUES} values "
                    "(YAML aliases used many times?); refused"
                )
        sizes[id(node)] = total
        return total

    count(data, 0)


def parse_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load`` with the size and nesting limits (`check_size`); errors name
    ``source`` and the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested deeper than {MAX_NESTING} levels; refused") from None
    check_size(data, source)
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    data = parse_yaml_text(text, str(path))
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


def user_path(value: str) -> Path:
    """``Path(value)`` with ``~`` expanded (kept as written where no home folder is known)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~nosuchuser/...": no such home folder
        return Path(value)


def resolve_data_path(value: str, folder: Path, builtin: bool) -> str:
    """A relative data path named in a YAML file in ``folder`` (see the module docstring)."""
    path = user_path(value)
    if path.is_absolute():
        return str(path)
    beside = (folder / path).resolve()
    if beside.exists() or (not builtin and not path.exists()):
        return str(beside)
    return str(path.resolve()) if path.exists() else value


def resolve_data_paths(data: dict[str, Any], path: Path) -> None:
    """Resolve the relative paths of ``data.train``/``data.val`` named in the file ``path``
    (its parsed content ``data``), in place."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    builtin = path.is_relative_to(BUILTIN_CONFIG_DIR)
    for split in ("train", "val"):
        spec = section.get(split)
        if not isinstance(spec, dict):
            continue
        for key in DATA_PATH_KEYS:
            if isinstance(spec.get(key), str) and spec[key]:
                spec[key] = resolve_data_path(spec[key], path.parent, builtin)


def _base_path(path: Path, base: Any) -> Path:
    """The file of one ``_base_`` entry of ``path``: relative to it, or a built-in name."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(
            f"{path}: _base_ must be a YAML file or a built-in config name (or a list of "
            f"them), got {base!r}"
        )
    local = path.parent / base
    if local.is_file():
        return local.resolve()
    builtin = _builtin_path(base)
    if builtin is not None:
        return builtin
    raise ConfigError(
        f"{path}: _base_ '{base}' not found: no file {local.resolve()} and no built-in "
        f"config{_builtin_hint(base)}"
    )


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and resolve its ``_base_`` files (relative to it, or built-in names),
    deepest first; its relative data paths become paths from its folder."""
    path = resolve_config_path(path) if not _chain else Path(path)
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}")
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str) or not isinstance(bases, list):
        bases = [bases]
    source = data.pop("data") if isinstance(data.get("data"), str) else None
    resolve_data_paths(data, path)
    merged: dict[str, Any] = {}
    for base in bases:
        inherited = load_raw(_base_path(path, base), (*_chain, path))
        # A base's run folder is the base's own (mmdetection's work_dirs/<config name>):
        # a config that does not set work_dir runs in runs/<its file name>.
        inherited.pop("work_dir", None)
        merged = merge(merged, inherited)
    merged = merge(merged, data)
    if source is not None:
        explicit = (
            data.get("model", {}).get("num_classes")
            if isinstance(data.get("model"), dict)
            else None
        )
        apply_data_source(
            merged, resolve_data_path(source, path.parent, False), f"{path}: data", explicit
        )
    return merged


def apply_data_source(
    raw: dict[str, Any], source: str, where: str, explicit_num_classes: Any = None
) -> None:
    """``data: PATH`` / ``data=PATH``: ``data.train``, ``data.val`` and ``model.num_classes``
    from an ultralytics dataset YAML or a dataset folder (other ``data`` keys are kept)."""
    from tunedet.data.dataset_files import DatasetFileError, dataset_splits

    try:
        splits = dataset_splits(source)
    except DatasetFileError as error:
        raise ConfigError(f"{where}: {error}") from None
    count = len(splits.classes)
    if explicit_num_classes is not None and explicit_num_classes != count:
        raise ConfigError(
            f"{where}: model.num_classes is {explicit_num_classes} but {source} has {count} "
            f"classes ({', '.join(splits.classes[:10])}{', ...' if count > 10 else ''})"
        )
    section = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    section["train"] = splits.train
    if splits.val is not None:
        section["val"] = splits.val
    else:
        section.pop("val", None)
    raw["data"] = section
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    model["num_classes"] = count
    raw["model"] = model


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.path=value")
    key, text = override.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    except RecursionError:
        raise ConfigError(
            f"override '{key}': nested deeper than {MAX_NESTING} levels; refused"
        ) from None
    check_size(value, f"override '{key}'")
    if key.strip() == "data" and isinstance(value, str):
        apply_data_source(raw, value, "data=")
        return
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
    from tunedet.data.classes import resolve_num_classes

    raw = load_raw(path)
    # ``data=PATH`` first: it sets model.num_classes, which a later override may contradict
    first = [o for o in overrides if o.split("=", 1)[0].strip() == "data"]
    for override in [*first, *(o for o in overrides if o not in first)]:
        apply_override(raw, override)
    cfg = validate(raw, source=str(path))
    resolve_num_classes(cfg, source=str(path))
    return cfg


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
    if kind == "value_error":  # a validator's own sentence, without pydantic's prefix
        message = str(error.get("ctx", {}).get("error", message))
    if kind == "missing":
        return f"{dotted}: required key is missing"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
    return f"{dotted}: {message} (got {shown})"
