"""Layer rules of the package, checked on the source: who may import whom.

Every ``*.py`` file under ``bandit_serve/`` is parsed with :mod:`ast` (nothing is imported
or run) and each of its import statements is collected:

* ``import x.y`` and ``from x.y import z`` alike, relative ones (``from .base import z``,
  ``from .. import errors``) resolved against the module's package;
* wherever they stand: at the top, inside functions and classes, under ``try:``;
* imports under ``if TYPE_CHECKING:`` count like any other, for every rule. A module that
  needs another's types for its annotations depends on it all the same (``mypy`` and the
  reader follow the import; the rule "the store does not import the config module" is
  about exactly such an import). Messages mark them "(under TYPE_CHECKING)".

``from x import z`` imports ``x.z`` when ``z`` is a submodule, and a name of ``x``
otherwise; it is recorded as ``x.z``, and a rule about module ``m`` matches ``m`` and
everything below it, so both cases are caught (``from bandit_serve import config`` is an
import of ``bandit_serve.config``). The rules are about direct imports: what the imported
modules import in turn is their own rules' business. Dynamic imports
(``importlib.import_module(name)``, as the model loader does for configured targets) are
not seen.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Modules of the package allowed to import ray (paths relative to the repository root).
RAY_ALLOWED = frozenset({"bandit_serve/service/serve_app.py", "bandit_serve/service/runner.py"})

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bandit_serve"


@dataclass(frozen=True)
class Import:
    """One imported module (or module attribute), as ``from x import y`` gives ``x.y``."""

    target: str
    line: int
    statement: str
    type_checking: bool

    def describe(self, path: str) -> str:
        where = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{path}:{self.line} imports {self.target}: `{self.statement}`{where}"


@dataclass(frozen=True)
class Module:
    path: str  # relative to the repository root, with "/": "bandit_serve/store/base.py"
    name: str  # dotted: "bandit_serve.store.base" ("bandit_serve.store" for its __init__)
    imports: tuple[Import, ...]


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``<anything>.TYPE_CHECKING`` (``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    node: ast.AST, type_checking: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below ``node``, with whether it is under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_checking
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]), type_checking)
        else:
            yield from _import_nodes(child, type_checking)


def _from_base(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The absolute module of ``from <base> import ...`` in module ``name``."""
    if node.level == 0:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    keep = len(package) - (node.level - 1)
    if keep <= 0:
        raise ValueError(f"{name}: relative import beyond the top-level package")
    return ".".join([*package[:keep], *([node.module] if node.module else [])])


def parse_module(path: str, source: str) -> Module:
    """The imports of one module; ``path`` like ``bandit_serve/store/base.py``."""
    name = module_name(path)
    is_package = path.endswith("/__init__.py")
    imports: list[Import] = []
    for node, type_checking in _import_nodes(ast.parse(source, filename=path)):
        statement = ast.unparse(node)
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _from_base(node, name, is_package)
            targets = [base if a.name == "*" else f"{base}.{a.name}" for a in node.names]
        imports += [Import(t, node.lineno, statement, type_checking) for t in targets]
    return Module(path, name, tuple(imports))


@cache
def package_modules() -> tuple[Module, ...]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    return tuple(
        parse_module(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in paths
    )


def within(target: str, module: str) -> bool:
    """``target`` is ``module`` or lies below it (``ray.serve`` is within ``ray``)."""
    return target == module or target.startswith(module + ".")


def violations(
    modules: tuple[Module, ...],
    applies: Callable[[Module], bool],
    forbidden: Callable[[str], bool],
) -> list[str]:
    return [
        imp.describe(m.path)
        for m in modules
        if applies(m)
        for imp in m.imports
        if forbidden(imp.target)
    ]


def report(rule: str, found: list[str]) -> str:
    return f"{rule}; offending imports:\n  " + "\n  ".join(found)


# -- the rules (each a function of the module list, so the checker test can feed its own) --


def under(folder: str) -> Callable[[Module], bool]:
    return lambda m: m.path.startswith(f"{PACKAGE}/{folder}/")


def policy_may_import(target: str) -> bool:
    root = target.partition(".")[0]
    return (
        root == "numpy"
        or (root in sys.stdlib_module_names and root != PACKAGE)
        or within(target, "bandit_serve.policies")
        or within(target, "bandit_serve.errors")
    )


def policies_rule(modules: tuple[Module, ...]) -> list[str]:
    return violations(modules, under("policies"), lambda t: not policy_may_import(t))


def simulation_rule(modules: tuple[Module, ...]) -> list[str]:
    return violations(modules, under("simulation"), lambda t: within(t, "bandit_serve.service"))


def core_rule(modules: tuple[Module, ...]) -> list[str]:
    return violations(
        modules,
        lambda m: m.path == "bandit_serve/service/core.py",
        lambda t: within(t, "ray") or within(t, "scipy"),
    )


def store_rule(modules: tuple[Module, ...]) -> list[str]:
    return violations(modules, under("store"), lambda t: within(t, "bandit_serve.config"))


def ray_rule(modules: tuple[Module, ...]) -> list[str]:
    return violations(modules, lambda m: m.path not in RAY_ALLOWED, lambda t: within(t, "ray"))


# -- the package ---------------------------------------------------------------------------


def test_policies_import_only_numpy_the_standard_library_and_policies() -> None:
    found = policies_rule(package_modules())
    assert not found, report(
        "bandit_serve/policies/* import only numpy, the standard library, "
        "bandit_serve.policies.* and bandit_serve.errors",
        found,
    )


def test_simulation_does_not_import_the_service() -> None:
    found = simulation_rule(package_modules())
    assert not found, report("bandit_serve/simulation/* never import bandit_serve.service", found)


def test_service_core_imports_neither_ray_nor_scipy() -> None:
    found = core_rule(package_modules())
    assert not found, report("bandit_serve/service/core.py imports no ray and no scipy", found)


def test_the_core_and_the_local_engine_load_no_ray_even_indirectly() -> None:
    """The rules above are about direct imports; this one follows every import: loading
    the service core, the HTTP API and the local engine in a fresh interpreter leaves Ray
    out of ``sys.modules`` (the local engine runs where Ray is not installed)."""
    import subprocess
    import sys

    code = (
        "import sys, bandit_serve.service.core, bandit_serve.service.http, "
        "bandit_serve.service.local, bandit_serve.cli; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_store_does_not_import_the_config() -> None:
    found = store_rule(package_modules())
    assert not found, report("bandit_serve/store/* do not import bandit_serve.config", found)


def test_only_the_serve_wiring_imports_ray() -> None:
    found = ray_rule(package_modules())
    assert not found, report(f"only {sorted(RAY_ALLOWED)} import ray", found)


# -- the checker itself, so that the rules above cannot pass vacuously --------------------


def test_every_module_of_the_package_is_parsed() -> None:
    modules = {m.path: m for m in package_modules()}
    assert "bandit_serve/service/core.py" in modules
    assert "bandit_serve/__init__.py" in modules
    assert any(p.startswith("bandit_serve/policies/") for p in modules)
    assert any(p.startswith("bandit_serve/store/") for p in modules)
    assert any(p.startswith("bandit_serve/simulation/") for p in modules)
    assert all(p in modules for p in RAY_ALLOWED), "an allowed ray module no longer exists"
    core = modules["bandit_serve/service/core.py"]
    assert core.imports, "no import found in core.py"
    assert any(within(i.target, "bandit_serve.store") for i in core.imports)


SAMPLE = """
from __future__ import annotations

import math
import numpy.typing as npt
from typing import TYPE_CHECKING

from . import base
from .base import Policy
from .. import errors

if TYPE_CHECKING:
    from bandit_serve.config import ExperimentConfig
else:
    import json

try:
    import scipy.stats
except ImportError:
    pass


def later():
    from bandit_serve import config
    import ray.serve as serve
"""


def sample(path: str) -> tuple[Module, ...]:
    return (parse_module(path, SAMPLE),)


def test_the_parser_finds_every_kind_of_import() -> None:
    (m,) = sample("bandit_serve/policies/sample.py")
    got = {(i.target, i.type_checking) for i in m.imports}
    assert got == {
        ("__future__.annotations", False),
        ("math", False),
        ("numpy.typing", False),
        ("typing.TYPE_CHECKING", False),
        ("bandit_serve.policies.base", False),
        ("bandit_serve.policies.base.Policy", False),
        ("bandit_serve.errors", False),
        ("bandit_serve.config.ExperimentConfig", True),
        ("json", False),
        ("scipy.stats", False),
        ("bandit_serve.config", False),
        ("ray.serve", False),
    }
    init = parse_module("bandit_serve/store/__init__.py", "from .base import Store\n")
    assert init.name == "bandit_serve.store"
    assert [i.target for i in init.imports] == ["bandit_serve.store.base.Store"]


def test_each_rule_reports_the_offending_module_and_import() -> None:
    policies = policies_rule(sample("bandit_serve/policies/sample.py"))
    assert [f.split(" imports ")[1].split(":")[0] for f in policies] == [
        "bandit_serve.config.ExperimentConfig",
        "scipy.stats",
        "bandit_serve.config",
        "ray.serve",
    ]
    assert policies[0] == (
        "bandit_serve/policies/sample.py:13 imports bandit_serve.config.ExperimentConfig: "
        "`from bandit_serve.config import ExperimentConfig` (under TYPE_CHECKING)"
    )
    store = store_rule(sample("bandit_serve/store/sample.py"))
    assert len(store) == 2 and all("bandit_serve/store/sample.py" in f for f in store)
    assert len(core_rule(sample("bandit_serve/service/core.py"))) == 2  # scipy and ray
    assert len(ray_rule(sample("bandit_serve/service/http.py"))) == 1
    assert ray_rule(sample("bandit_serve/service/runner.py")) == []
    simulation = parse_module(
        "bandit_serve/simulation/x.py", "def f():\n    from ..service import core\n"
    )
    assert simulation_rule((simulation,)) == [
        "bandit_serve/simulation/x.py:2 imports bandit_serve.service.core: "
        "`from ..service import core`"
    ]
    # rules only look at their own modules
    assert store_rule(sample("bandit_serve/service/core.py")) == []
    assert simulation_rule(sample("bandit_serve/store/sample.py")) == []
