"""House rules on what a reader sees printed, checked on the outputs of the nbval run itself.

``make test-notebooks`` (``pytest --nbval-lax notebooks``) already executes every notebook in smoke mode; this hook
looks at each cell's printed output as nbval collects it, so the rules cost no second execution:

- no printed line wider than :data:`MAX_WIDTH` characters (JupyterLab wraps wider lines in a laptop window, and a
  table whose rows wrap is unreadable);
- no wording meant for developers (:data:`DEVELOPER_WORDING`: CI, load average, targets, bars, table rows of
  another document).

What is checked: ``stdout`` streams and plain-text results that have no HTML form (a DataFrame shown as the last
expression renders as an HTML table, which scrolls). Progress bars (``stderr``, widgets) and tracebacks are not.
``tests/test_notebook_house_rules.py`` tests these functions.

A second rule, on memory: every notebook's smoke run must fit in :data:`MAX_PEAK_BYTES` (1.5 GB = 1.5·10⁹ bytes,
the unit of the README's table; Binder gives about 2 GB). After a notebook's last cell, one more test item,
``<notebook>::peak memory``, reads the peak resident set size of the kernel process (``VmHWM`` in
``/proc/<pid>/status``, its high-water mark since the kernel started), adds the peaks of the kernel's live child
processes (none of the notebooks starts any), and fails naming the notebook and its peak when the sum is above
the limit. Where ``/proc`` is not available (not Linux) it is skipped with the reason.
``tests/test_notebook_memory.py`` tests these functions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

MAX_WIDTH = 110
DEVELOPER_WORDING = re.compile(
    r"\bCI\b|(?i:continuous integration|load average)|\b[Rr]ow \d+\b"
    r"|(?<![\"'])\b[Tt]argets?\b(?! (?:model|point|class|label|set)s?\b)(?!'s)"
    r"|(?<![\\-])(?<![Ee]rror )(?<![Pp]rogress )\b[Bb]ars?\b")
"""Developer wording: CI, load averages, "row N" of a benchmark table, targets and bars to meet. The privacy
attack's *target model*, *target point* and *the target's* recipe, *error bars*, *progress bars* and the
notation H-bar are fine."""

# Fixed on other branches: remove an entry when its notebook passes (see tests/test_notebook_house_rules.py).
KNOWN_VIOLATIONS: set[str] = set()


def printed_text(outputs) -> str:
    """The text a reader sees printed by one cell: its stdout streams and its plain-text results without an
    HTML form, joined. ``outputs``: the cell's outputs as nbformat dictionaries (``output_type``, ...)."""
    parts = []
    for out in outputs or []:
        kind = out.get("output_type")
        if kind == "stream" and out.get("name") == "stdout":
            parts.append("".join(out.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "text/plain" in data and "text/html" not in data and not any(
                    k.startswith("application/vnd.jupyter.widget") for k in data):
                parts.append("".join(data["text/plain"]))
    return "\n".join(parts)


def printed_problems(outputs) -> list[str]:
    """Every broken rule in one cell's printed output, as readable messages (``[]`` when there is none)."""
    problems = []
    for line in printed_text(outputs).splitlines():
        line = line.rstrip()
        if len(line) > MAX_WIDTH:
            problems.append(f"printed line of {len(line)} > {MAX_WIDTH} characters: {line[:80]!r}...")
        m = DEVELOPER_WORDING.search(line)
        if m:
            problems.append(f"developer wording {m.group(0)!r} in printed line {line[:100]!r}")
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    outputs = getattr(item, "test_outputs", None)  # set by nbval's cell items
    notebook = getattr(getattr(item, "parent", None), "path", None)
    if outputs is not None and (notebook is None or notebook.name not in KNOWN_VIOLATIONS):
        problems = printed_problems(outputs)
        if problems:
            raise AssertionError("house rules for printed output (notebooks/conftest.py):\n  "
                                 + "\n  ".join(problems))
    return result


# --- peak memory of each notebook's kernel ---------------------------------------------------------------------

MAX_PEAK_BYTES = 1_500_000_000
"""The largest peak resident memory a notebook's smoke run may reach: 1.5 GB (10⁹ bytes per GB, as in the
README's table of run times and memory)."""

PEAK_ITEM_NAME = "peak memory"


def parse_vmhwm(status_text: str) -> int | None:
    """Bytes of the ``VmHWM`` line (peak resident set size) of a ``/proc/<pid>/status`` text; ``None`` when the
    line is missing (a kernel thread, or a process that has already exited). Linux writes ``kB`` for units of
    1024 bytes."""
    m = re.search(r"^VmHWM:\s*(\d+)\s*kB\s*$", status_text, flags=re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def parse_ppid(stat_text: str) -> int:
    """The parent pid in a ``/proc/<pid>/stat`` text: the second field after the command name, which is written
    in parentheses and may itself hold spaces and parentheses (so the fields are read after the last ``)``)."""
    return int(stat_text[stat_text.rindex(")") + 1:].split()[1])


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...) in ``parents`` (pid -> parent pid), sorted."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p != pid and p not in found:
            found.append(p)
            todo.extend(children.get(p, []))
    return sorted(found)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited meanwhile, or no permission
        return None


def process_tree_peak(pid: int, proc: str | os.PathLike = "/proc") -> tuple[int, dict[int, int]]:
    """Peak resident memory of process ``pid`` plus that of each of its live descendants, in bytes, and the
    peaks per pid. The sum is an upper bound of the peak of the whole tree (the peaks need not be simultaneous);
    children that have already exited are not seen.

    Raises:
        FileNotFoundError: ``proc``/``pid``/status is not readable or has no ``VmHWM`` line (not Linux, or the
            process is gone).
    """
    proc = Path(proc)
    own = parse_vmhwm(_read(proc / str(pid) / "status") or "")
    if own is None:
        raise FileNotFoundError(f"no VmHWM line in {proc / str(pid) / 'status'}")
    parents = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat:
                parents[int(entry.name)] = parse_ppid(stat)
    peaks = {pid: own}
    for child in descendants(pid, parents):
        peak = parse_vmhwm(_read(proc / str(child) / "status") or "")
        if peak is not None:
            peaks[child] = peak
    return sum(peaks.values()), peaks


def peak_problem(notebook: str, peak_bytes: int, peaks: dict[int, int] | None = None,
                 limit: int = MAX_PEAK_BYTES) -> str | None:
    """The failure message when ``peak_bytes`` is above ``limit`` (``None`` when it fits), naming the notebook,
    its peak and the limit in GB (10⁹ bytes), and the processes when there are several."""
    if peak_bytes <= limit:
        return None
    detail = ""
    if peaks and len(peaks) > 1:
        detail = " (" + ", ".join(f"pid {p}: {b / 1e9:.2f} GB" for p, b in sorted(peaks.items())) + ")"
    return (f"{notebook}: peak resident memory of the kernel {peak_bytes / 1e9:.2f} GB{detail} is above "
            f"{limit / 1e9:.2f} GB, the most a notebook may need in its smoke run (Binder gives about 2 GB)")


def kernel_pid(notebook_item) -> int | None:
    """The pid of the kernel process that nbval runs a notebook in (``None`` when there is none or it is not a
    local process). ``notebook_item``: nbval's notebook collector (``IPyNbFile``), whose ``kernel.km`` is a
    jupyter_client ``KernelManager``."""
    km = getattr(getattr(notebook_item, "kernel", None), "km", None)
    if km is None:
        return None
    pid = getattr(getattr(km, "provisioner", None), "pid", None)  # jupyter_client >= 7
    if pid is None:
        pid = getattr(getattr(km, "kernel", None), "pid", None)  # older jupyter_client: a Popen
    return pid


class PeakMemoryItem(pytest.Item):
    """Runs after a notebook's last cell, in the same kernel: fails when its peak memory is above the limit."""

    def runtest(self):
        kernel = getattr(self.parent, "kernel", None)
        if kernel is None or not kernel.is_alive():
            pytest.skip("the notebook's kernel is not running (an earlier cell failed or it was not started)")
        pid = kernel_pid(self.parent)
        if pid is None:
            pytest.skip("the kernel is not a local process: its memory cannot be read")
        try:
            total, peaks = process_tree_peak(pid)
        except (FileNotFoundError, NotADirectoryError) as err:
            pytest.skip(f"peak memory not measured: /proc is not available ({err})")
        self.user_properties.append(("peak_rss_bytes", total))
        problem = peak_problem(self.parent.path.name, total, peaks)
        if problem:
            raise AssertionError(problem)

    def reportinfo(self):
        return self.path, None, f"{self.parent.path.name}::{PEAK_ITEM_NAME}"


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item.parent, "kernel")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only notebooks that still run a cell get the check
def pytest_collection_modifyitems(session, config, items):
    last = {}
    for i, item in enumerate(items):
        if _is_nbval_cell(item):
            last[item.parent] = i
    for parent, i in sorted(last.items(), key=lambda kv: -kv[1]):
        items.insert(i + 1, PeakMemoryItem.from_parent(parent, name=PEAK_ITEM_NAME))


def pytest_terminal_summary(terminalreporter):
    """One line per notebook with its measured peak (the figures of the README's table)."""
    rows = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, value in getattr(report, "user_properties", []):
            if key == "peak_rss_bytes":
                rows.append((report.nodeid.split("::")[0], value))
    if rows:
        terminalreporter.write_sep("-", "peak resident memory of each notebook's kernel")
        for nodeid, value in sorted(rows):
            terminalreporter.write_line(f"{value / 1e9:.2f} GB  {nodeid}")
