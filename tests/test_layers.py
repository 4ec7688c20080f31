"""The import layers of camim (docs/architecture.md): no module imports a module of a higher layer.

Every ``import`` in ``src/camim`` counts, wherever it stands: module level, inside a function (the lazy
imports that keep start-up light), under ``if TYPE_CHECKING``, relative or absolute, plus
``importlib.import_module("camim....")`` with a literal name. Packages of one layer may use each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Low to high. ``camim`` is the root package itself (``camim/__init__.py``: the version only).
LAYERS: list[tuple[str, ...]] = [
    ("camim", "camim.errors"),
    # shared helpers: files, typed config loading, optimisers, the run folder (contract 3), Lightning settings
    ("camim.io", "camim.typed", "camim.optim", "camim.runs", "camim.trainer", "camim.progress"),
    ("camim.data", "camim.reports"),  # reports: report.md, plots and comparison tables of finished runs
    ("camim.models",),
    ("camim.speed",),  # fast paths the training side switches on; never imports training
    ("camim.pretraining", "camim.captioning", "camim.preprocess"),  # encoders made before fine-tuning
    ("camim.training",),  # the Lightning run: train, evaluate
    # inference may use captioning (captioners), zero-shot its backends; experiments train and compare runs
    ("camim.inference", "camim.zeroshot", "camim.experiments"),
    ("camim.synthetic", "camim.demo", "camim.cli", "camim.__main__", "camim.hub"),  # entry points
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """The layered unit (a package or top-level module) that ``module`` belongs to; None outside camim."""
    if module != "camim" and not module.startswith("camim."):
        return None
    best = "camim"
    for unit in LAYER_OF:
        if (module == unit or module.startswith(unit + ".")) and len(unit) > len(best):
            best = unit
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every camim import in the file at ``path`` (a file under ``root``)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from camim import training`` imports camim.training: name each imported name
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, target) for line, target in found if unit_of(target) is not None]


def layer_violations(root: Path) -> list[str]:
    """``file:line: A (layer i) imports B (layer j > i)`` for every upward import below ``root``, plus
    modules that belong to no layer (a new package must be placed in LAYERS)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        unit = unit_of(module)
        if unit == "camim" and module != "camim":
            problems.append(
                f"{path}: {module} is in no layer; add its package to LAYERS in tests/test_layers.py"
            )
            continue
        for line, target in imported_modules(path, root):
            target_unit = unit_of(target)
            if LAYER_OF[target_unit] > LAYER_OF[unit]:
                problems.append(
                    f"{path}:{line}: {module} (layer {LAYER_OF[unit]}, {unit}) imports {target} "
                    f"(layer {LAYER_OF[target_unit]}, {target_unit})"
                )
    return problems


def test_no_module_imports_a_higher_layer():
    assert (SRC / "camim" / "io.py").is_file()  # the scan reads the real package
    assert layer_violations(SRC) == []


def test_every_import_is_seen():
    """The scan finds module-level and lazy (function-level) imports in the real package."""
    seen = {t for p in (SRC / "camim").rglob("*.py") for _, t in imported_modules(p, SRC)}
    assert "camim.errors.CamimError" in seen  # module level
    assert "camim.captioning.images.ImageItem" in seen  # lazy, inside inference.captioners


def _write(root: Path, module: str, text: str) -> None:
    path = root / Path(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in [path.parent, *path.parent.parents]:
        if folder == root:
            break
        (folder / "__init__.py").touch()
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    "module, text, culprit",
    [
        ("camim.data.bad", "def f():\n    from camim.training.api import train_run\n", "camim.training.api"),
        ("camim.speed.bad", "import camim.training.module\n", "camim.training.module"),
        ("camim.models.bad", "from ..inference import predictor\n", "camim.inference.predictor"),
        ("camim.io", "from camim import data\n", "camim.data"),
        ("camim.errors", "import importlib\nimportlib.import_module('camim.cli')\n", "camim.cli"),
        ("camim.captioning.sub.bad", "from ...inference.cli import run\n", "camim.inference.cli"),
    ],
)
def test_a_planted_violation_is_reported(tmp_path, module, text, culprit):
    _write(tmp_path, "camim.errors", "class CamimError(Exception):\n    pass\n")
    _write(tmp_path, "camim.training.api", "from camim.data import x\nfrom .module import y\n")  # allowed
    assert layer_violations(tmp_path) == []
    _write(tmp_path, module, text)
    problems = layer_violations(tmp_path)
    assert len(problems) == 1 and f"imports {culprit}" in problems[0], problems
    assert str(tmp_path / Path(*module.split("."))) in problems[0]


def import_circles(root: Path) -> list[list[str]]:
    """The groups of modules below ``root`` that import each other in a circle (every import counts, lazy ones
    included; an imported name is resolved to the module that defines it)."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}

    def owner(target: str) -> str | None:  # camim.x.y.Name -> camim.x.y (the longest module prefix)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {owner(t) for _, t in imported_modules(p, root)} - {None, m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    assert import_circles(SRC) == []


def test_a_planted_import_circle_is_reported(tmp_path):
    _write(tmp_path, "camim.errors", "class CamimError(Exception):\n    pass\n")
    _write(tmp_path, "camim.training.api", "def f():\n    from camim.training.pretrain import g\n")
    _write(tmp_path, "camim.training.pretrain", "from camim.training import api\n")
    assert import_circles(tmp_path) == [["camim.training.api", "camim.training.pretrain"]]


def test_a_package_outside_the_layers_is_reported(tmp_path):
    _write(tmp_path, "camim.newthing.core", "x = 1\n")
    problems = layer_violations(tmp_path)
    assert any("camim.newthing.core is in no layer" in p for p in problems), problems
