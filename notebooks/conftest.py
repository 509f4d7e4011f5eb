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
"""

from __future__ import annotations

import re

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
