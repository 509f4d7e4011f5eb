"""The Binder environment (binder/) installs the same versions as the tested root requirements.txt, with the CPU
builds of torch and torchvision (repo2docker reads binder/ instead of the repository root)."""

import os
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_BUILDS = {"torch", "torchvision"}  # packages whose default PyPI wheels carry CUDA libraries


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
        assert name not in pins or path != ROOT / "requirements.txt", f"{name} pinned twice in {path.name}"
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
