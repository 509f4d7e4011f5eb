"""The experiment notebooks (06-09) keep the contract with the sweep runner: papermill can read
every parameter, PRESET and RESULTS_DIR exist with None defaults, and each preset has its sizes."""

import logging
from pathlib import Path

import papermill
import pytest

from unroll_utils import protocols

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
EXPERIMENTS = {"06_pretraining.ipynb": "pretraining", "07_cifar_fine_tuning.ipynb": "fine_tuning",
               "08_sd_loss_sweep.ipynb": "sd_loss_sweep", "09_training_from_scratch.ipynb": "from_scratch"}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_parameters_follow_the_contract(name, caplog):
    with caplog.at_level(logging.WARNING):
        found = papermill.inspect_notebook(str(ROOT / name))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()], "every parameter line parses"
    assert found["RESULTS_DIR"]["default"] == "None" and found["PRESET"]["default"] == "None"
    assert found["DEVICE"]["default"] == '"auto"' and "SMOKE" in found and "DOWNLOAD" in found
    assert all(p["help"] for p in found.values()), "one comment per parameter"


@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS.values())))
def test_every_preset_is_defined_with_the_same_keys(experiment):
    keys = [set(protocols.preset(experiment, p)) for p in protocols.PRESET_NAMES]
    assert all(k == keys[0] for k in keys) and len(keys) == 4
    assert protocols.preset(experiment, "smoke")["dataset"] == "mnist"  # CI needs no CIFAR
    assert protocols.preset(experiment, "cpu")["dataset"] == "mnist"  # the CPU report runs offline
    assert protocols.preset(experiment, "small")["dataset"] == "cifar10"
    assert protocols.preset(experiment, "small")["model"] == "resnet18"


@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS.values())))
def test_cpu_preset_runs_three_seeds_of_the_paper_protocol(experiment):
    cpu, small = protocols.preset(experiment, "cpu"), protocols.preset(experiment, "small")
    assert cpu["model"] == "small_cnn" and cpu["n_train"] >= 2000
    if "n_seeds" in cpu:  # intervals over seeds need at least 3
        assert cpu["n_seeds"] >= 3
    for key in ("schedule", "order"):  # the paper's shape, not another protocol
        assert cpu.get(key) == small.get(key)


def test_default_preset_is_cpu_without_a_gpu_and_smoke_under_ci():
    assert protocols.default_preset(True, cuda=True) == "smoke"
    assert protocols.default_preset(True, cuda=False) == "smoke"
    assert protocols.default_preset(False, cuda=True) == "small"
    assert protocols.default_preset(False, cuda=False) == "cpu"


def test_at_preset_is_true_only_for_the_unchanged_preset():
    sizes = protocols.preset("sd_loss_sweep", "cpu")
    assert protocols.at_preset("cpu", "cpu", sizes, lams=list(sizes["lams"]), epochs=sizes["epochs"])
    assert protocols.at_preset("cpu", "cpu", sizes, lams=tuple(sizes["lams"]))  # list vs tuple: same values
    assert not protocols.at_preset("small", "cpu", sizes, epochs=sizes["epochs"])  # another preset
    assert not protocols.at_preset("cpu", "cpu", sizes, lams=sizes["lams"][:2])  # a thinner grid
    assert not protocols.at_preset("cpu", "cpu", sizes, epochs=sizes["epochs"] + 1)
    with pytest.raises(KeyError, match="epoch"):
        protocols.at_preset("cpu", "cpu", sizes, epoch=5)  # a typo does not silently disable the check


def test_check_ranges_prints_and_fails_on_a_value_outside(capsys):
    protocols.check_ranges({"pearson": 0.9, "ve": 0.02}, {"pearson": (0.8, 1.0), "ve": (0.01, 0.02)})
    assert "pearson = 0.9 (recorded range [0.8, 1])" in capsys.readouterr().out  # bounds are inclusive
    with pytest.raises(AssertionError, match=r"ve = 0.03 not in \[0.01, 0.02\]"):
        protocols.check_ranges({"pearson": 0.9, "ve": 0.03}, {"pearson": (0.8, 1.0), "ve": (0.01, 0.02)})
    with pytest.raises(AssertionError, match="nan"):  # a NaN is outside every range
        protocols.check_ranges({"ve": float("nan")}, {"ve": (0.0, 1.0)})
    with pytest.raises(KeyError, match="acc"):
        protocols.check_ranges({"acc": 0.5}, {"ve": (0.0, 1.0)})
