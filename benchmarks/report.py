"""Collects the measurements and writes ``results.csv``, ``measurements.csv`` and ``results.md``."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from unroll_utils.results import atomic_write

SUMMARY_COLUMNS = ["row", "benchmark", "setting", "ours", "baseline", "quantity", "ours_value",
                   "baseline_value", "ratio", "target", "status", "notes"]
DETAIL_COLUMNS = ["row", "setting", "case", "n", "seconds", "spread", "hvps", "rel_err",
                  "peak_mem_mb", "py_peak_mb", "notes"]


def fmt(x, digits: int = 3) -> str:
    """Numbers to short strings for the table (CSV keeps full precision)."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf"
        if x == 0:
            return "0"
        if abs(x) >= 1e4 or abs(x) < 1e-3:
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


@dataclass
class Report:
    summary: list[dict] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)

    def add(self, **row) -> None:
        self.summary.append({k: row.get(k) for k in SUMMARY_COLUMNS})

    def detail(self, **row) -> None:
        self.details.append({k: row.get(k) for k in DETAIL_COLUMNS})

    # ---- output -------------------------------------------------------------------------------
    @staticmethod
    def _csv(rows: list[dict], columns: list[str]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        return buf.getvalue()

    @staticmethod
    def _md_table(rows: list[dict], columns: list[str], labels: dict[str, str] | None = None) -> str:
        labels = labels or {}
        head = "| " + " | ".join(labels.get(c, c) for c in columns) + " |"
        sep = "|" + "|".join("---" for _ in columns) + "|"
        lines = [head, sep]
        for r in rows:
            cells = [fmt(r.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        out = ["# Benchmark results", ""]
        for k, v in self.header.items():
            out.append(f"- **{k}**: {v}")
        out += ["", "## Targets and ratios (measured side by side in this run)", "",
                self._md_table(self.summary, SUMMARY_COLUMNS,
                               {"ours_value": "ours", "baseline_value": "baseline",
                                "ours": "ours (method)", "baseline": "baseline (method)"}),
                "", "## Measurements", "",
                "Seconds are medians over `n` timed repeats (after warm-up); `spread` = "
                "(max − min)/median. `peak_mem_mb`: peak above the start of a repeat (CPU: "
                "sampled RSS; CUDA: `max_memory_allocated`). `py_peak_mb`: tracemalloc peak "
                "(Python objects and NumPy only) in a separate untimed run.", "",
                self._md_table(self.details, DETAIL_COLUMNS)]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def write(self, out_dir) -> list:
        rows = [{**r, "ratio_value": ratio_value(r.get("ratio"))} for r in self.summary]
        paths = [
            atomic_write(f"{out_dir}/results.csv",
                         lambda f: f.write(self._csv(rows, SUMMARY_COLUMNS + ["ratio_value"]))),
            atomic_write(f"{out_dir}/measurements.csv", lambda f: f.write(self._csv(self.details, DETAIL_COLUMNS))),
            atomic_write(f"{out_dir}/results.md", lambda f: f.write(self.markdown())),
        ]
        return paths


def ratio_value(text) -> float | None:
    """The number in a ratio cell ("1.5×", "≥3×", "4.99%" → 0.0499); None when there is none."""
    if not isinstance(text, str):
        return None
    t = text.strip().lstrip("≥").split(" ")[0]
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100
        return float(t.rstrip("×").replace(",", ""))
    except ValueError:
        return None


def ratio_text(x: float) -> str:
    """A ratio for the table: 3 significant digits, whole numbers with separators from 1,000 on."""
    return f"{x:,.0f}×" if abs(x) >= 1000 else f"{x:.3g}×"


def status(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "PASS" if ok else "FAIL"
