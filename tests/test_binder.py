"""The Binder environment (binder/) installs the same versions as the tested root requirements.txt, with the CPU
builds of torch and torchvision (repo2docker reads binder/ instead of the repository root), and nothing of
requirements-dev.txt (tests, the book, the browser check): what the notebooks and the package import is in
requirements.txt or pulled in by it."""

import ast
import importlib.metadata as metadata
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_BUILDS = {"torch", "torchvision"}  # packages whose default PyPI wheels carry CUDA libraries
# Imported by the package only inside the function of an optional path, with an install message there.
OPTIONAL_IMPORTS = {"datasets": "unroll_utils.text.load_imdb (SOURCE='imdb')"}


def read_requirements(path: Path) -> tuple[dict[str, Version], list[str]]:
    """Exact pins (name -> version) of a requirements file, following -r includes relative to the file,
    and its other option lines."""
    pins, options = {}, []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            inc_pins, inc_options = read_requirements((path.parent / line.split(maxsplit=1)[1]).resolve())
            for name, version in inc_pins.items():
                pins.setdefault(name, version)  # the including file's own pin comes first
            options += inc_options
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        name = req.name.lower().replace("_", "-")
        assert name not in pins or path.parent != ROOT, f"{name} pinned twice in {path.name}"
        pins.setdefault(name, Version(spec[0].version))
    return pins, options


def test_every_root_pin_is_in_binder_with_the_same_version():
    root, _ = read_requirements(ROOT / "requirements.txt")
    binder, _ = read_requirements(BINDER / "requirements.txt")
    assert root, "no pins in requirements.txt"
    for name, version in root.items():
        assert name in binder, f"{name} is pinned in requirements.txt but not in binder/requirements.txt"
        assert binder[name].public == version.public, f"{name}: binder {binder[name]} vs root {version}"
        if name in CPU_BUILDS:
            assert binder[name].local == "cpu", f"{name} on Binder must be the CPU build ({version}+cpu)"
        else:
            assert binder[name] == version


def test_binder_installs_the_project_from_the_cpu_index():
    text = (BINDER / "requirements.txt").read_text(encoding="utf-8")
    _, options = read_requirements(BINDER / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options
    assert re.search(r"^-e \.$", text, re.M), "binder/requirements.txt installs the package (-e .)"


def test_runtime_matches_the_supported_python():
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    low = Version(re.search(r">=\s*([0-9.]+)", project["requires-python"]).group(1))
    assert Version(runtime.split("-")[1]) >= low
    assert low >= Version("3.11"), "mlxtend 0.25 needs Python >= 3.11"


def test_start_script_sets_one_thread_and_hands_over():
    start = BINDER / "start"
    text = start.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash") and os.access(start, os.X_OK)
    assert re.search(r"\bOMP_NUM_THREADS=1\b", text)
    assert re.search(r"UNROLL_SMOKE=\"\$\{UNROLL_SMOKE:-1\}\"", text), "smoke-sized defaults on Binder"
    assert text.rstrip().splitlines()[-1] == 'exec "$@"', "binder/start must end with exec \"$@\""
    post = BINDER / "postBuild"
    if post.exists():  # repo2docker ignores postBuild errors unless the script stops on them
        assert "set -e" in post.read_text(encoding="utf-8")


def test_binder_installs_the_no_deps_packages_of_the_makefile():
    """Packages the Makefile installs with --no-deps (outside requirements.txt) reach Binder too, same version."""
    root = BINDER.parent
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    pinned = set(re.findall(r"--no-deps\s+([A-Za-z0-9_.-]+==[^\s]+)", makefile))
    assert pinned, "the Makefile installs no --no-deps pin (update this test if that changed)"
    post = (BINDER / "postBuild").read_text(encoding="utf-8")
    for pin in pinned:
        assert pin in post, f"binder/postBuild must install {pin} (with --no-deps) as the Makefile does"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_binder_installs_nothing_of_the_development_requirements():
    root, _ = read_requirements(ROOT / "requirements.txt")
    dev, _ = read_requirements(ROOT / "requirements-dev.txt")
    binder, _ = read_requirements(BINDER / "requirements.txt")
    assert not re.search(r"^\s*(-r|--requirement)\s+\S*requirements-dev", (BINDER / "requirements.txt").read_text(
        encoding="utf-8"), re.M), "binder/requirements.txt includes requirements-dev.txt"
    dev_only = set(dev) - set(root)
    assert {"pytest", "playwright", "datasets", "sphinx", "myst-nb"} <= dev_only, sorted(dev_only)
    assert not dev_only & set(binder), f"Binder installs development tools: {sorted(dev_only & set(binder))}"
    for name, version in root.items():  # requirements-dev.txt includes requirements.txt, never re-pins it
        assert dev[name] == version, f"{name}: requirements-dev.txt {dev[name]} vs requirements.txt {version}"
    assert re.search(r"^-r requirements\.txt$", (ROOT / "requirements-dev.txt").read_text(encoding="utf-8"), re.M)


def _top_level_imports(source: str, *, lazy: bool) -> set[str]:
    """Top-level module names imported by ``source``: at module level only (lazy=False) or anywhere."""
    tree = ast.parse(source)
    nodes = ast.walk(tree) if lazy else tree.body
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _imports_of_the_reader_code() -> tuple[set[str], set[str]]:
    """(every import, module-level imports) of the notebooks (every code cell) and the package."""
    every, eager = set(), set()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
                names = _top_level_imports(src, lazy=True)
                every |= names
                eager |= names  # a notebook cell runs when the reader runs it
    for py in sorted((ROOT / "unroll_utils").glob("*.py")):
        src = py.read_text(encoding="utf-8")
        every |= _top_level_imports(src, lazy=True)
        eager |= _top_level_imports(src, lazy=False)
    third_party = lambda names: {n for n in names if n not in sys.stdlib_module_names and n != "unroll_utils"}
    return third_party(every), third_party(eager)


def _installed_closure(names) -> set[str]:
    """``names`` and every distribution they require (no extras), read from the installed metadata."""
    from packaging.requirements import Requirement

    seen, todo = set(), [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


def test_what_the_notebooks_import_is_in_the_notebook_requirements():
    """Every third-party module that a notebook or the package imports comes with requirements.txt (or the
    --no-deps pin of postBuild); the one exception, ``datasets``, is imported only inside its function."""
    every, eager = _imports_of_the_reader_code()
    assert {"torch", "ipywidgets", "transformers"} <= every, sorted(every)  # the scan sees the imports
    root, _ = read_requirements(ROOT / "requirements.txt")
    post = re.findall(r"--no-deps\s+([A-Za-z0-9_.-]+)==", (BINDER / "postBuild").read_text(encoding="utf-8"))
    runtime = _installed_closure(list(root) + post)
    module_to_dists = metadata.packages_distributions()
    missing = {}
    for module in sorted(every):
        dists = {_norm(d) for d in module_to_dists.get(module, [])}
        if not dists:
            pytest.fail(f"{module!r} is imported by a notebook or unroll_utils but is not installed here")
        if dists & runtime:
            continue
        missing[module] = sorted(dists)
    optional = {m: d for m, d in missing.items() if m in OPTIONAL_IMPORTS}
    assert missing == optional, f"imported by a notebook or the package, not in requirements.txt: {missing}"
    for module in optional:
        assert module not in eager, f"{module} must be imported lazily, in {OPTIONAL_IMPORTS[module]}"


def test_imdb_without_datasets_names_the_install_command(monkeypatch):
    """Without ``datasets`` (Binder), the IMDB path stops with the pin of requirements-dev.txt and the offline
    alternative, not with a bare import error."""
    from unroll_utils import text

    dev, _ = read_requirements(ROOT / "requirements-dev.txt")
    assert text.DATASETS_PIN == f"datasets=={dev['datasets']}"
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install datasets==.*SOURCE='rotten_tomatoes'") as err:
        text.load_imdb("train")
    assert err.value.name == "datasets"
