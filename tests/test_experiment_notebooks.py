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
    assert keys[0] == keys[1] == keys[2]
    assert protocols.preset(experiment, "smoke")["dataset"] == "mnist"  # CI needs no CIFAR
    assert protocols.preset(experiment, "small")["dataset"] == "cifar10"
    assert protocols.preset(experiment, "small")["model"] == "resnet18"
