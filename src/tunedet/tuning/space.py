"""A search space over dotted config keys, read from YAML, sampled by an Optuna trial.

The file::

    metric: AP50              # the validation metric to maximise (a key of the trainer's metrics)
    params:                   # sampled in this order; each becomes an override ``key=value``
      optim.type: {choice: [adamw, sgd]}
      optim.lr: {float: [3.0e-4, 1.0e-2], log: true}
      optim.momentum: {float: [0.8, 0.95], when: {optim.type: sgd}}
      model.assigner.topk: {int: [5, 15], step: 2}
      schedule.warmup: {choice: [{type: none}, {type: linear, iters: 50}]}

A parameter is one of ``float: [low, high]`` (``log: true`` for a log scale, ``step``
for a grid), ``int: [low, high]`` (``log``, ``step``) or ``choice: [values]`` (any YAML
values, sections included). ``when: {key: value}`` (or ``{key: [values]}``) samples the
parameter only when an earlier parameter took one of those values: a conditional key
such as SGD's momentum. A ``type`` key changes a component and drops its other
settings (the loader's rule), so list it before the component's other keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunedet.config.loader import ConfigError, read_yaml

KINDS = ("float", "int", "choice")
PARAM_KEYS = {"float", "int", "choice", "log", "step", "when"}


@dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` float / int / choice, its range or values, and
    ``when`` = {earlier key: allowed values} for a conditional parameter."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether the condition holds for the values sampled so far."""
        return all(k in chosen and chosen[k] in allowed for k, allowed in self.when.items())

    def grid_values(self) -> list[Any]:
        """Every value of the parameter (for the grid sampler): a float range needs ``step``."""
        if self.kind == "choice":
            return list(self.values)
        if self.step is None and self.kind == "float":
            raise ConfigError(f"{self.key}: the grid sampler needs 'step' on a float range")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else values


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    metric: str = "AP"
    source: str = "space"

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` (an ``optuna.Trial``) for every active parameter, in file order;
        returns {key: value} (choices decoded back to their YAML values)."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if not p.active(chosen):
                continue
            if p.kind == "float":
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                step = int(p.step or 1)
                chosen[p.key] = trial.suggest_int(
                    p.key, int(p.low), int(p.high), step=step, log=p.log
                )
            else:
                encoded = [encode_choice(v) for v in p.values]
                chosen[p.key] = decode_choice(trial.suggest_categorical(p.key, encoded))
        return chosen

    def grid(self) -> dict[str, list[Any]]:
        """The search space of ``optuna.samplers.GridSampler`` (choices encoded)."""
        return {
            p.key: [encode_choice(v) for v in p.grid_values()]
            if p.kind == "choice"
            else p.grid_values()
            for p in self.params
        }

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def describe(self) -> dict[str, Any]:
        """The space as plain JSON values (stored with the study, compared on re-runs)."""
        params = []
        for p in self.params:
            entry: dict[str, Any] = {"key": p.key, "kind": p.kind}
            if p.kind == "choice":
                entry["values"] = [encode_choice(v) for v in p.values]
            else:
                entry.update(low=p.low, high=p.high, log=p.log, step=p.step)
            if p.when:
                entry["when"] = {k: [encode_choice(v) for v in vs] for k, vs in p.when.items()}
            params.append(entry)
        return {"metric": self.metric, "params": params}


def encode_choice(value: Any) -> Any:
    """Optuna stores only None/bool/int/float/str: a list or section becomes its JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def overrides_for(chosen: dict[str, Any]) -> list[str]:
    """``key=value`` overrides (values as JSON, which is YAML) in sampling order."""
    return [f"{key}={json.dumps(value)}" for key, value in chosen.items()]


def params_from_optuna(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's ``params`` back in file order with choices decoded."""
    return {p.key: decode_choice(params[p.key]) for p in space.params if p.key in params}


def metric_names(cfg: Any) -> tuple[set[str], tuple[str, ...]]:
    """The validation metrics a training of ``cfg`` returns: exact names and name prefixes
    (VOC's ``AP/<class>``). COCO's 12 stats (and ``segm_`` ones for a mask detector), or
    VOC's ``mAP``; nothing when the config has no ``data.val``."""
    from tunedet.config.registry import REGISTRIES
    from tunedet.evaluation.coco import COCO_STAT_NAMES

    if cfg.data.val is None:
        return set(), ()
    if cfg.eval.metric == "coco":
        names, prefixes = set(COCO_STAT_NAMES), ()
    else:
        names, prefixes = {"mAP"}, ("AP/",)
    detector = REGISTRIES["detector"].get(cfg.model.type).target
    if getattr(detector, "needs_masks", False):
        names |= {f"segm_{name}" for name in COCO_STAT_NAMES}
    return names, prefixes


def check_metric(space: SearchSpace, config: str, base_overrides: list[str]) -> None:
    """Refuse, before the first trial, a ``metric`` that training of the config never
    reports (otherwise found after a whole trial)."""
    from tunedet.config.loader import load_config

    cfg = load_config(config, list(base_overrides))
    names, prefixes = metric_names(cfg)
    if not names:
        raise ConfigError(
            f"{space.source}: the config has no data.val, so trials have no '{space.metric}' "
            "to maximise"
        )
    if space.metric in names or space.metric.startswith(prefixes):
        return
    import difflib

    lower = {name.lower(): name for name in sorted(names)}
    close = difflib.get_close_matches(space.metric.lower(), list(lower), n=1, cutoff=0.5)
    hint = f"; did you mean '{lower[close[0]]}'?" if close else ""
    shown = ", ".join(sorted(names)) + "".join(f", {p}<class>" for p in prefixes)
    raise ConfigError(
        f"{space.source}: metric '{space.metric}' is not a metric of eval.metric="
        f"{cfg.eval.metric}{hint} (metrics: {shown})"
    )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_param(key: str, spec: Any, earlier: dict[str, Param], where: str) -> Param:
    """One ``key: {float|int|choice: ..., log, step, when}`` entry; errors name the key."""
    where = f"{where}: params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{float: [0.001, 0.1], log: true}}")
    unknown = sorted(set(spec) - PARAM_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting '{unknown[0]}' (allowed: {', '.join(sorted(PARAM_KEYS))})"
        )
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: give exactly one of float: [low, high], int: [low, high], choice: [values]"
        )
    kind = kinds[0]
    when = _parse_when(spec.get("when"), earlier, where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if kind == "choice":
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice must be a non-empty list of values")
        if "log" in spec or "step" in spec:
            raise ConfigError(f"{where}: log and step apply to float and int ranges, not choice")
        encoded = [encode_choice(v) for v in values]
        if len(set(map(str, encoded))) != len(encoded):
            raise ConfigError(f"{where}: choice lists a value twice")
        return Param(key, kind, values=tuple(values), when=when)
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ConfigError(f"{where}: {kind} must be [low, high], got {bounds!r}")
    low, high = (_number(b, where) for b in bounds)
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: int bounds must be integers, got {bounds!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got [{bounds[0]}, {bounds[1]}]")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {bounds[0]}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, where)
        if step <= 0 or (kind == "int" and not step.is_integer()):
            raise ConfigError(
                f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}"
            )
        if log:
            raise ConfigError(
                f"{where}: step and log cannot be combined (Optuna samples one or the other)"
            )
    return Param(key, kind, low, high, log, step, when=when)


def _parse_when(when: Any, earlier: dict[str, Param], where: str) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{where}: when must be a mapping {{earlier.key: value or [values]}}")
    parsed = {}
    for key, allowed in when.items():
        if key not in earlier:
            raise ConfigError(
                f"{where}: when refers to '{key}', which is not a parameter listed before this one"
            )
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if earlier[key].kind == "choice":
            missing = [v for v in allowed if v not in earlier[key].values]
            if missing:
                choices = ", ".join(map(str, earlier[key].values))
                raise ConfigError(
                    f"{where}: when {key}={missing[0]!r} is not one of its choices ({choices})"
                )
        parsed[key] = allowed
    return parsed


def parse_space(data: dict[str, Any], source: str = "space") -> SearchSpace:
    """Validate a loaded space mapping (see the module docstring)."""
    unknown = sorted(set(data) - {"metric", "params"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key '{unknown[0]}' (allowed: metric, params)"
        )
    params_raw = data.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{source}: 'params' must be a non-empty mapping of dotted config keys")
    metric = data.get("metric", "AP")
    if not isinstance(metric, str):
        raise ConfigError(f"{source}: metric must be a metric name such as AP or AP50")
    parsed: dict[str, Param] = {}
    for key, spec in params_raw.items():
        if not isinstance(key, str) or not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"{source}: params.{key}: not a dotted config key such as optim.lr")
        parsed[key] = parse_param(key, spec, parsed, source)
    return SearchSpace(tuple(parsed.values()), metric, source)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; one-line ``ConfigError`` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        configs = Path(__file__).resolve().parent.parent / "configs"
        names = (f"{path}", f"{path}.yaml", f"tuning/{path}", f"tuning/{path}.yaml")
        found = [configs / n for n in names if (configs / n).is_file()]
        if not found:
            raise ConfigError(
                f"search space '{path}' not found (no such file, nor in configs/tuning/)"
            )
        path = found[0]
    return parse_space(read_yaml(path), str(path))


def check_against_config(space: SearchSpace, config: str, base_overrides: list[str]) -> None:
    """Load the config with every parameter at its low bound / first choice and at its high
    bound / last choice, so a key the schema does not know fails before any training."""
    from tunedet.config.loader import load_config

    for pick in (0, -1):
        chosen: dict[str, Any] = {}
        for p in space.params:
            if p.active(chosen):
                values = p.values if p.kind == "choice" else (p.low, p.high)
                value = values[pick]
                chosen[p.key] = int(value) if p.kind == "int" else value
        try:
            load_config(config, [*base_overrides, *overrides_for(chosen)])
        except ConfigError as error:
            raise ConfigError(f"{space.source}: a sampled config is invalid: {error}") from None
