"""The package's layers (docs/architecture.md), checked statically: every import points down, none in a cycle,
no private name of Ray, Optuna or MLflow is used, and every `sweeplab.*` MLflow tag name is spelled in
core/names.py alone.

The walk reads the source with `ast`, so it sees imports inside functions (the lazy ones that keep
torch and Ray out of the driver) as well as module-level ones: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared names and errors", ("sweeplab.core",)),
    ("config schema, published tables", ("sweeplab.schema", "sweeplab.reference")),
    (
        "engine and its parts",
        (
            "sweeplab.models",
            "sweeplab.data",
            "sweeplab.optim",
            "sweeplab.schedules",
            "sweeplab.ghost_bn",
            "sweeplab.precision",
            "sweeplab.engine",
            "sweeplab.checkpoints",
        ),
    ),
    ("config loading and validation", ("sweeplab.config", "sweeplab.validate")),
    ("sweep compiler", ("sweeplab.search_spaces",)),
    ("ledger", ("sweeplab.ledger",)),
    ("tracking (MLflow)", ("sweeplab.tracking",)),
    ("runner (Ray)", ("sweeplab.runner",)),
    ("analysis", ("sweeplab.analysis",)),
    ("commands", ("sweeplab.commands",)),
    ("command line", ("sweeplab.cli",)),
    # `import sweeplab` itself: the Python API, whose functions import the layers below lazily (the
    # package's modules import it first whatever they import, so it must stay light: it is checked by name)
    ("Python API", ("sweeplab",)),
]

# Which layers may import which heavy third-party package: Ray stays in the runner (its API has
# changed three times), MLflow in tracking and analysis, torch in the engine and what runs it.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "ray": ("sweeplab.runner",),
    "optuna": ("sweeplab.runner",),
    "mlflow": ("sweeplab.tracking", "sweeplab.analysis"),
    "torch": LAYERS[2][1] + ("sweeplab.runner", "sweeplab.commands.train", "sweeplab.commands.models"),
    "torchvision": ("sweeplab.data",),
}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted((SRC / "sweeplab").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def imports(name: str) -> set[str]:
    """The sweeplab modules and top-level third-party packages that module `name` imports, anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m if m.startswith("sweeplab") else m.split(".")[0] for m in out}


def layer(name: str) -> int:
    """The index in LAYERS of the layer `name` belongs to (its longest matching prefix)."""
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            below = name.startswith(p + ".") and p != "sweeplab"  # the package root holds no module but itself
            if (name == p or below) and len(p) > best:
                best, found = len(p), i
    assert found is not None, f"{name} is in no layer: add it to LAYERS and to docs/architecture.md"
    return found


def parents(name: str) -> list[str]:
    """The packages Python runs before module `name`: importing a.b.c runs a/__init__ and a/b/__init__."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_import_points_down(name):
    here = layer(name)
    for target in sorted(imports(name)):
        if not target.startswith("sweeplab"):
            continue
        # a module's own parent packages run first whatever it imports: they may sit in a lower
        # layer or in its own, so a package's __init__ never drags in a layer above its modules
        for dep in [*parents(target), target]:
            if dep in parents(name):
                continue
            assert layer(dep) <= here, (
                f"{name} ({LAYERS[here][0]}) imports {dep} ({LAYERS[layer(dep)][0]}), a layer above it"
            )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_heavy_packages_stay_in_their_layers(name):
    for package, allowed in THIRD_PARTY.items():
        if package in imports(name):
            assert any(name == a or name.startswith(a + ".") for a in allowed), (
                f"{name} imports {package}, which belongs to {', '.join(allowed)} only"
            )


def test_no_import_cycle():
    graph = {m: {t for t in imports(m) if t in MODULES} for m in MODULES}
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        if m in stack:
            cycle = [*stack[stack.index(m) :], m]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        for t in sorted(graph[m]):
            visit(t, [*stack, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The walk itself: an engine module importing the runner is reported."""
    bad = tmp_path / "engine.py"
    bad.write_text("def f():\n    from sweeplab.runner import ray_backend\n")
    monkeypatch.setitem(MODULES, "sweeplab.engine", bad)
    with pytest.raises(AssertionError, match=r"imports sweeplab.runner \(runner"):
        test_every_import_points_down("sweeplab.engine")


def test_the_check_catches_a_cycle(tmp_path, monkeypatch):
    """The walk itself: two modules importing each other (even lazily) are reported."""
    (tmp_path / "config.py").write_text("def f():\n    from sweeplab import validate\n")
    (tmp_path / "validate.py").write_text("from sweeplab.config import load\n")
    monkeypatch.setitem(MODULES, "sweeplab.config", tmp_path / "config.py")
    monkeypatch.setitem(MODULES, "sweeplab.validate", tmp_path / "validate.py")
    with pytest.raises(AssertionError, match="import cycle: sweeplab.config -> sweeplab.validate -> sweeplab.config"):
        test_no_import_cycle()


# ---- public APIs only ---------------------------------------------------------------------------

LIBRARIES = ("ray", "optuna", "mlflow")


def private_uses(source: str) -> list[str]:
    """Uses of a private name of Ray, Optuna or MLflow in `source`: `from ray.x import _y`, an attribute
    `_y` reached from a name bound to one of those packages' modules (`ray._private`, `tune._x`,
    `optuna.samplers._base`), and a keyword argument `_y=` passed to one of their functions. Dunders
    (`__version__`) are public."""
    tree = ast.parse(source)
    bound: set[str] = set()  # local names that refer to a module or object of the libraries
    found = []

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    bound.add((a.asname or a.name).split(".")[0])
                    found += [f"import {a.name}" for part in a.name.split(".") if private(part)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            module = node.module or ""
            for a in node.names:
                bound.add(a.asname or a.name)
                if private(a.name) or any(private(p) for p in module.split(".")):
                    found.append(f"from {module} import {a.name}")

    def rooted(expr: ast.expr) -> bool:
        while isinstance(expr, (ast.Attribute, ast.Call, ast.Subscript)):
            expr = expr.func if isinstance(expr, ast.Call) else expr.value
        return isinstance(expr, ast.Name) and expr.id in bound

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and rooted(node.value):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
        if isinstance(node, ast.Call) and rooted(node.func):
            found += [
                f"{ast.unparse(node.func)}({k.arg}=...) (line {node.lineno})"
                for k in node.keywords
                if k.arg and private(k.arg)
            ]
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_public_names_of_ray_optuna_and_mlflow(name):
    """A minor release may rename anything private: sweeplab uses the libraries' public API only."""
    assert private_uses(MODULES[name].read_text()) == [], name


def test_the_check_catches_private_names():
    source = """
import ray
from ray import tune
from ray.train.torch.config import _TorchBackend
from mlflow.store.db.utils import _upgrade_db
import optuna

def f(study, tuner):
    ray.init(_temp_dir="/tmp/x")
    tune.Tuner._local_tuner
    optuna.samplers._base.x
    ray.__version__
    study._ot_trials  # not rooted at a library name: the layer's docs cover attributes of objects
"""
    found = private_uses(source)
    assert len(found) == 5, found
    assert any("_TorchBackend" in f for f in found) and any("_upgrade_db" in f for f in found)
    assert any("_temp_dir" in f for f in found) and any("_local_tuner" in f for f in found)
    assert any("_base" in f for f in found)


# ---- MLflow tag names in one place --------------------------------------------------------------

TAG_HOME = "sweeplab.core.names"  # where every `sweeplab.*` tag name is spelled (users' queries rely on them)
TAG = re.compile(r"(?<![\w.])sweeplab\.[A-Za-z_][\w.]*")  # "sweeplab.outcome", "sweeplab.row." (an f-string's part)
NOT_TAGS = {"sweeplab.json"}  # the launch folder's record, a file name


def tag_literals(source: str) -> list[str]:
    """The `sweeplab.<name>` tag names spelled in `source`'s strings: str constants, the constant parts of
    f-strings, and such names inside longer strings (a search filter "tags.`sweeplab.x` = ..."). Docstrings
    and other bare string statements are prose; module paths ("sweeplab.tracking.follow") and NOT_TAGS
    are no tags."""
    tree = ast.parse(source)
    prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            for match in TAG.findall(node.value):
                name = match.rstrip(".")
                if name not in MODULES and name not in NOT_TAGS:
                    found.append((node.lineno, name))
    return [f"{name!r} (line {line})" for line, name in sorted(found)]


@pytest.mark.parametrize("name", sorted(set(MODULES) - {TAG_HOME}))
def test_tag_names_live_in_core_names(name):
    """Every `sweeplab.*` MLflow tag is a constant of core/names.py (or `names.row_tag`): one spelling each."""
    found = tag_literals(MODULES[name].read_text())
    assert found == [], f"{name} spells tag names {found}: use (or add) a constant of core/names.py"


def test_the_tag_names_are_in_core_names():
    """The check's other half: core/names.py does spell the tags (the scan is not blind)."""
    assert len(tag_literals(MODULES[TAG_HOME].read_text())) >= 20


def test_the_check_catches_a_tag_literal(tmp_path, monkeypatch):
    """The walk itself: tag names as a constant, in an f-string and in a search filter are reported;
    a docstring, a module path, an f-string of modules and sweeplab.json are not."""
    bad = tmp_path / "follow.py"
    bad.write_text(
        '"""Tags `sweeplab.outcome` and `sweeplab.row.<table>`."""\n'
        "import subprocess, sys\n"
        "def f(tr, table, family, folder):\n"
        '    """Sets `sweeplab.hardware`."""\n'
        '    tr.set_tag("sweeplab.hardware", "cpu")\n'
        '    tr.set_tag(f"sweeplab.row.{table}", "0")\n'
        "    tr.search(f\"tags.`sweeplab.pbt.origin` = '{family}'\")\n"
        '    subprocess.run([sys.executable, "-m", "sweeplab.tracking.follow"])\n'
        '    return f"sweeplab.models.{family}", folder / "sweeplab.json"\n'
    )
    monkeypatch.setitem(MODULES, "sweeplab.tracking.follow", bad)
    found = tag_literals(bad.read_text())
    assert found == ["'sweeplab.hardware' (line 5)", "'sweeplab.row' (line 6)", "'sweeplab.pbt.origin' (line 7)"]
    with pytest.raises(AssertionError, match=r"sweeplab.tracking.follow spells tag names .*sweeplab.hardware"):
        test_tag_names_live_in_core_names("sweeplab.tracking.follow")
