"""The package's module layers (README, "What is where"): a module imports only modules of the layers
above its own, and no module of ``unroll_utils`` is over 500 lines."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unroll_utils"
LIMIT = 500  # lines per module
NOT_YET_SPLIT: set[str] = set()


def readme_layers() -> dict[str, int]:
    """module → layer, from the README's table (rows ``| <layer> | `module` (...), ... |``)."""
    layers = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        row = re.match(r"^\| (\d) \| (`.*) \|$", line)  # layer rows: one digit, then a module name
        if row:
            for name in re.findall(r"(?:^|\), |, )`([a-z_]+)`", row.group(2)):
                layers[name] = int(row.group(1))
    return layers


def package_imports(path: Path, level: int = 1) -> set[str]:
    """The ``unroll_utils`` modules a module imports (relative or absolute imports); ``level`` is the
    number of dots that reach ``unroll_utils`` (2 inside a subpackage)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unroll_utils"):
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("unroll_utils.")}
    return out


MODULES = sorted([p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
                 + [p.parent.name for p in PACKAGE.glob("*/__init__.py")])


def files_of(module: str) -> list[Path]:
    """The source files of a module: itself, or every file of a subpackage."""
    single = PACKAGE / f"{module}.py"
    return [single] if single.exists() else sorted((PACKAGE / module).glob("*.py"))


def imports_of(module: str) -> set[str]:
    """The other ``unroll_utils`` modules that a module (or any file of a subpackage) imports."""
    level = 1 if (PACKAGE / f"{module}.py").exists() else 2
    return set().union(*(package_imports(f, level) for f in files_of(module))) - {module}


def test_the_readme_places_every_module_once():
    layers = readme_layers()
    assert sorted(layers) == MODULES


def test_a_module_imports_only_lower_layers():
    layers = readme_layers()
    upward = [(m, d) for m in MODULES for d in imports_of(m)
              if d in layers and layers[d] >= layers[m]]
    assert upward == [], f"imports of the same or a lower layer: {upward}"


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .trajectory import run_lockstep\nfrom unroll_utils import data\n")
    assert package_imports(bad) == {"trajectory", "data"}
    inner = tmp_path / "inner.py"
    inner.write_text("from ..statistics import seed_summary\nfrom .grid import Grid\n")
    assert package_imports(inner, level=2) == {"statistics"}


def test_no_module_over_500_lines():
    long = {f.name: n for m in MODULES if m not in NOT_YET_SPLIT for f in files_of(m)
            if (n := len(f.read_text().splitlines())) > LIMIT}
    assert long == {}
