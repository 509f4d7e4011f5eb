"""Atomic results files, checkpoints and the notebook cache."""

import json

import pandas as pd
import pytest

from unroll_utils import results


def test_save_and_load_table_roundtrip(tmp_path):
    df = pd.DataFrame({"t": [1, 2], "ve": [0.5, float("nan")]})
    csv, js = results.save_table(df, tmp_path / "out" / "res.csv", config={"lr": 0.1}, summary={"r": 0.9})
    assert csv.name == "res.csv" and js.name == "res.json"
    table, config, summary = results.load_table(tmp_path / "out" / "res")
    assert table["t"].tolist() == [1, 2] and table["ve"].iloc[0] == 0.5
    assert config == {"lr": 0.1} and summary == {"r": 0.9}
    payload = json.loads(js.read_text())
    assert payload["rows"][1]["ve"] is None  # NaN written as JSON null, the file stays valid JSON
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.txt"
    results.atomic_write(target, lambda f: f.write("old"))

    def broken(f):
        f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        results.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_load_or_run_computes_once(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"x": [1, 2, 3]}

    assert results.load_or_run("k_smoke=1", fn, tmp_path) == {"x": [1, 2, 3]}
    assert results.load_or_run("k_smoke=1", fn, tmp_path) == {"x": [1, 2, 3]}
    assert len(calls) == 1
    results.load_or_run("k_smoke=1", fn, tmp_path, overwrite=True)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="key"):
        results.load_or_run("../escape", fn, tmp_path)


def test_fingerprint_is_stable_and_sensitive():
    a = results.fingerprint({"lr": 0.1, "b": [1, 2]})
    assert a == results.fingerprint({"b": [1, 2], "lr": 0.1})
    assert a != results.fingerprint({"lr": 0.2, "b": [1, 2]})


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """Tables are readable by others as any file the user writes (mkstemp alone would leave 0600)."""
    import os

    from unroll_utils import results

    old = os.umask(0o022)
    try:
        p = results.atomic_write(tmp_path / "t.csv", lambda f: f.write("a\n"))
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644 and p.read_text() == "a\n"
