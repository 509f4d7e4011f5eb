"""The peak-memory rule of ``notebooks/conftest.py``: no notebook's smoke run above 1.5 GB (10⁹ bytes per GB).

The hook reads ``/proc/<pid>/status`` of the nbval kernel; its parsing and decision are tested here on hand-made
``/proc`` texts and a hand-made process tree, and once on this process's own ``/proc`` entry where there is one.
"""

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
PPid:\t4200
VmPeak:\t 3921508 kB
VmSize:\t 3855972 kB
VmHWM:\t 1464844 kB
VmRSS:\t 1203400 kB
Threads:\t12
"""


def _rules():
    spec = importlib.util.spec_from_file_location("notebook_memory_rules", NOTEBOOK_DIR / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_proc(root: Path, tree: dict[int, tuple[int, str, int | None]]) -> Path:
    """A /proc folder: pid -> (parent pid, command name, VmHWM in kB or None for no VmHWM line)."""
    for pid, (ppid, comm, hwm_kb) in tree.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 1 0 0 0\n")
        (d / "status").write_text(f"Name:\t{comm}\nPid:\t{pid}\n"
                                  + (f"VmHWM:\t{hwm_kb:>8} kB\n" if hwm_kb is not None else ""))
    (root / "self").mkdir()  # non-numeric entries are not processes
    (root / "meminfo").write_text("MemTotal: 1 kB\n")
    return root


def test_limit_is_one_and_a_half_decimal_gigabytes():
    assert _rules().MAX_PEAK_BYTES == 1_500_000_000


def test_parse_vmhwm_reads_kibibytes():
    rules = _rules()
    assert rules.parse_vmhwm(STATUS) == 1464844 * 1024  # not VmPeak (virtual) nor VmRSS (current)
    assert rules.parse_vmhwm("Name:\tkthreadd\nPid:\t2\n") is None  # kernel threads have no Vm lines
    assert rules.parse_vmhwm("") is None


def test_parse_ppid_survives_spaces_and_parentheses_in_the_command_name():
    rules = _rules()
    assert rules.parse_ppid("4242 (python) S 4200 4242 4242 0 -1") == 4200
    assert rules.parse_ppid("77 (a (b) c) R 13 77 77 0 -1") == 13


def test_descendants_walks_the_whole_tree_and_nothing_else():
    rules = _rules()
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 20}
    assert rules.descendants(10, parents) == [11, 12, 13]
    assert rules.descendants(13, parents) == []
    assert rules.descendants(1, parents) == [10, 11, 12, 13, 20, 21]


def test_process_tree_peak_adds_the_live_children(tmp_path):
    rules = _rules()
    proc = _fake_proc(tmp_path / "proc", {
        1: (0, "init", 1000),
        100: (1, "python -m ipykernel", 1_000_000),  # the kernel: 1,000,000 kB
        101: (100, "worker", 300_000),
        102: (101, "grand child", 50_000),
        103: (100, "zombie", None),  # exited, not yet reaped: no VmHWM line
        200: (1, "other", 9_000_000),  # not below the kernel
    })
    total, peaks = rules.process_tree_peak(100, proc)
    assert peaks == {100: 1_000_000 * 1024, 101: 300_000 * 1024, 102: 50_000 * 1024}
    assert total == 1_350_000 * 1024
    with pytest.raises(FileNotFoundError, match="VmHWM"):
        rules.process_tree_peak(103, proc)
    with pytest.raises(FileNotFoundError):
        rules.process_tree_peak(999, proc)


def test_peak_problem_decides_at_the_limit_and_names_notebook_and_peak():
    rules = _rules()
    assert rules.peak_problem("10_text_imdb.ipynb", 1_500_000_000) is None
    assert rules.peak_problem("10_text_imdb.ipynb", 1_190_000_000) is None
    msg = rules.peak_problem("10_text_imdb.ipynb", 1_760_000_000)
    assert "10_text_imdb.ipynb" in msg and "1.76 GB" in msg and "1.50 GB" in msg
    assert rules.peak_problem("x.ipynb", 1_500_000_001) is not None
    msg = rules.peak_problem("x.ipynb", 2_000_000_000, {7: 1_200_000_000, 8: 800_000_000})
    assert "pid 7: 1.20 GB" in msg and "pid 8: 0.80 GB" in msg


def test_kernel_pid_from_nbval_kernel_manager():
    rules = _rules()

    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    new = Obj(kernel=Obj(km=Obj(provisioner=Obj(pid=321))))  # jupyter_client >= 7
    old = Obj(kernel=Obj(km=Obj(provisioner=None, kernel=Obj(pid=654))))  # a Popen on the manager
    assert rules.kernel_pid(new) == 321
    assert rules.kernel_pid(old) == 654
    assert rules.kernel_pid(Obj(kernel=None)) is None


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/status").exists(), reason="no /proc (not Linux)")
def test_own_peak_is_read_from_proc_and_matches_getrusage():
    import resource

    rules = _rules()
    total, peaks = rules.process_tree_peak(os.getpid())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    assert peaks[os.getpid()] >= maxrss * 0.99
    assert abs(peaks[os.getpid()] - maxrss) <= 0.05 * maxrss + 50 * 2**20
    assert total >= peaks[os.getpid()]


def test_hooks_are_registered():
    rules = _rules()
    assert callable(rules.pytest_collection_modifyitems) and callable(rules.pytest_runtest_call)
    assert rules.PEAK_ITEM_NAME == "peak memory"


@pytest.mark.slow
@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/status").exists(), reason="no /proc (not Linux)")
def test_nbval_run_gets_a_peak_item_that_fails_above_the_limit(tmp_path):
    """A real nbval run of a one-cell notebook: the conftest adds ``peak memory`` after the last cell; it passes
    at 1.5 GB and fails, naming the notebook and its peak, with the limit lowered to 1 MB."""
    import json
    import subprocess
    import sys

    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {}, "outputs": [],
                     "source": ["x = bytearray(50 * 2**20)\n", "print(len(x))"]}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    conftest = (NOTEBOOK_DIR / "conftest.py").read_text()
    for name, limit in (("fits", "1_500_000_000"), ("over", "1_000_000")):
        d = tmp_path / name
        d.mkdir()
        (d / "tiny.ipynb").write_text(json.dumps(nb))
        (d / "conftest.py").write_text(conftest.replace("MAX_PEAK_BYTES = 1_500_000_000",
                                                        f"MAX_PEAK_BYTES = {limit}"))
        run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p",
                              "no:python", "-p", "no:cacheprovider", "-rA", "tiny.ipynb"],
                             cwd=d, capture_output=True, text=True, timeout=240)
        out = run.stdout + run.stderr
        assert "tiny.ipynb::peak memory" in out, out[-3000:]
        if name == "fits":
            assert run.returncode == 0, out[-3000:]
        else:
            assert run.returncode == 1, out[-3000:]
            assert "tiny.ipynb: peak resident memory of the kernel" in out and "above 0.00 GB" in out
