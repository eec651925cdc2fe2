"""The package's imports run one way, read from the source with ``ast`` (no import needed):
``cli`` → ``engine``/``analysis``/``tuning`` → ``models``/``data`` → ``boxes``,
``anchors``, ``assigners``, ``losses``; no module imports another's ``_private`` name; and
below the builders no module takes the whole config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunedet"

# A package may import packages of its own rank or lower. ``config`` (the registry and the
# schema, which imports every component package to register it) is outside the ranks.
RANK = {
    "boxes": 0,
    "anchors": 0,
    "assigners": 1,
    "losses": 1,
    "samplers": 1,
    "models": 2,
    "data": 2,
    "evaluation": 2,
    "engine": 3,
    "analysis": 4,
    "tuning": 4,
    "deploy": 4,
    "fit": 4,
    "cli": 5,
    "api": 5,
    "__init__": 6,
    "__main__": 6,
}


def package_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


def tunedet_imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` of every ``tunedet`` import, at any depth (the
    imports inside functions count: they run too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "tunedet":
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tunedet":
                    found.append((node.lineno, alias.name, []))
    return found


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def layering_violations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        package = package_of(path)
        if package == "config" or package not in RANK:
            continue
        for line, module, _ in tunedet_imports(ast.parse(path.read_text())):
            parts = module.split(".")
            if len(parts) == 1:  # the root package: __version__, and the API loaded lazily
                continue
            target = parts[1]
            if target == package or target == "config" or target not in RANK:
                continue
            if RANK[target] > RANK[package]:
                problems.append(f"{path.relative_to(SRC)}:{line} ({package}) imports {module}")
    return problems


def private_imports(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        for line, module, names in tunedet_imports(ast.parse(path.read_text())):
            private = [n for n in names if n.startswith("_")]
            private += [p for p in module.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                problems.append(f"{path.relative_to(SRC)}:{line} imports {private} of {module}")
    return problems


# The modules that turn the config into objects. Everything else in ``engine`` and below
# (and the run report) takes typed arguments: plain values, or one of the config's own
# sections (``TTAConfig``, ``SlicedConfig``, ``data_cfg``), never the whole config.
CONFIG_READERS = {
    "engine/build.py": "the builder",
    "engine/trainer.py": "Trainer(cfg, run_dir) builds its parts through engine/build.py",
    "models/build.py": "the model builder",
    "data/build.py": "the dataset and loader builder",
    "data/classes.py": "completes model.num_classes from the data, for the builders",
}
# Functions below the builders that take the config as data, reading none of its knobs.
CONFIG_AS_DATA = {("engine/checkpoint.py", "config_to_dict")}
BELOW_THE_BUILDERS_ALSO = {"analysis/report.py"}


def takes_the_config(path: Path) -> bool:
    rel = path.relative_to(SRC).as_posix()
    if rel in CONFIG_READERS:
        return False
    package = package_of(path)
    return RANK.get(package, 99) <= RANK["engine"] or rel in BELOW_THE_BUILDERS_ALSO


def whole_config_uses(files: list[Path]) -> list[str]:
    """Functions that take a ``cfg`` parameter, and reads of an object's ``.cfg``
    (``trainer.cfg``), in the modules below the builders."""
    problems = []
    for path in files:
        if not takes_the_config(path):
            continue
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                if "cfg" in names and (rel, node.name) not in CONFIG_AS_DATA:
                    problems.append(f"{rel}:{node.lineno} {node.name}() takes the whole config")
            elif isinstance(node, ast.Attribute) and node.attr == "cfg":
                problems.append(f"{rel}:{node.lineno} reads {ast.unparse(node)}")
    return problems


def test_every_package_has_a_rank():
    packages = {package_of(p) for p in sources()} - {"config"}
    assert packages <= set(RANK), f"add to RANK: {sorted(packages - set(RANK))}"


def test_imports_run_from_cli_down_to_boxes():
    assert layering_violations(sources()) == []


def test_no_module_imports_a_private_name_of_another():
    assert private_imports(sources()) == []


@pytest.mark.parametrize(
    ("package", "source", "caught"),
    [
        ("models", "from tunedet.engine.distributed import reduce_mean\n", True),
        ("losses", "def f():\n    import tunedet.models.detectors\n", True),
        ("engine", "from tunedet.analysis.draw import draw_detections\n", True),
        ("cli", "from tunedet.engine.build import model_from_checkpoint\n", False),
        ("models", "from tunedet.config.registry import register\n", False),
    ],
)
def test_the_checker_catches_an_uphill_import(tmp_path, monkeypatch, package, source, caught):
    fake = tmp_path / "tunedet"
    (fake / package).mkdir(parents=True)
    (fake / package / "mod.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.SRC", fake)
    assert bool(layering_violations([fake / package / "mod.py"])) is caught


def test_the_checker_catches_a_private_import(tmp_path, monkeypatch):
    fake = tmp_path / "tunedet"
    (fake / "cli").mkdir(parents=True)
    (fake / "cli" / "bench.py").write_text("from tunedet.cli.main import _load, main\n")
    monkeypatch.setattr(f"{__name__}.SRC", fake)
    assert private_imports([fake / "cli" / "bench.py"]) == [
        "cli/bench.py:1 imports ['_load'] of tunedet.cli.main"
    ]


def test_objects_below_the_builders_never_take_the_whole_config():
    assert whole_config_uses(sources()) == []


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("engine/evaluator.py", "def predict(model, dataset, cfg, device):\n    pass\n", True),
        ("engine/hooks.py", "def f(trainer):\n    return trainer.cfg.eval\n", True),
        ("models/heads/head.py", "class H:\n    def __init__(self, *, cfg):\n        pass\n", True),
        ("analysis/report.py", "def write_report(run_dir, cfg):\n    pass\n", True),
        (
            "engine/test_time_augmentation.py",
            "def with_tta(model, tta, size_divisor):\n    pass\n",
            False,
        ),
        ("engine/build.py", "def eval_settings(cfg):\n    return cfg.eval\n", False),
        ("analysis/lr_plot.py", "def base_lr(cfg):\n    return cfg.optim.lr\n", False),
        ("cli/main.py", "def write_run_report(trainer):\n    return trainer.cfg\n", False),
    ],
)
def test_the_checker_catches_the_whole_config_below_the_builders(
    tmp_path, monkeypatch, module, source, caught
):
    fake = tmp_path / "tunedet"
    (fake / module).parent.mkdir(parents=True)
    (fake / module).write_text(source)
    monkeypatch.setattr(f"{__name__}.SRC", fake)
    assert bool(whole_config_uses([fake / module])) is caught


def test_engine_modules_stay_small():
    """The engine is small parts: no module of it over 400 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SRC / "engine").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
