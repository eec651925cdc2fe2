"""The package's imports run one way, read from the source with ``ast`` (no import needed):
``cli`` → ``engine``/``analysis``/``tuning`` → ``models``/``data`` → ``boxes``,
``anchors``, ``assigners``, ``losses``; and no module imports another's ``_private`` name."""

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


def test_engine_modules_stay_small():
    """The engine is small parts: no module of it over 400 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SRC / "engine").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
