"""Checkpoints are data: a pickle that would run code is refused unread, with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from monoocc_ros.checkpoint import CheckpointError, load_checkpoint, plain, save_checkpoint
from monoocc_ros.model.config import load_named_config


class _MakesADirectory:
    """Unpickling this calls os.mkdir(target): the payload a hostile checkpoint would carry."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.fixture()
def hostile(tmp_path):
    target = tmp_path / "payload_ran"
    path = tmp_path / "hostile.pt"
    torch.save({"format": 1, "model_config": {"name": "x"}, "weights": {}, "x": _MakesADirectory(str(target))}, path)
    return path, target


def test_a_code_running_pickle_is_refused_and_nothing_runs(hostile):
    path, target = hostile
    with pytest.raises(CheckpointError, match=r"was refused: it holds posix\.mkdir") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_commands_refuse_it_in_one_line(hostile, tmp_path, command):
    path, target = hostile
    args = {
        "predict": ["--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "p"), "--model", str(path)],
        "eval": ["--checkpoint", str(path), "--data", str(tmp_path)],
        "export": ["--checkpoint", str(path), "--out", str(tmp_path / "e.pt")],
    }[command]
    if command == "predict":
        from PIL import Image

        Image.fromarray(np.zeros((376, 1241, 3), np.uint8)).save(tmp_path / "none.png")
    proc = subprocess.run([sys.executable, "-m", "monoocc_ros.cli", command, *args], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "refused" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not target.exists()


def test_saved_checkpoints_hold_only_plain_values(tmp_path):
    """Metrics computed with numpy become Python floats, so `weights_only=True` reads them."""
    cfg = load_named_config("student_tiny")
    metrics = {"miou": np.float64(12.5), "class_iou": np.arange(3, dtype=np.float32), "steps": np.int64(4)}
    save_checkpoint(tmp_path / "c.pt", cfg, {"w": torch.ones(2)}, metrics=metrics, epoch=(1, 2))
    data = load_checkpoint(tmp_path / "c.pt")
    assert data["metrics"] == {"miou": 12.5, "class_iou": [0.0, 1.0, 2.0], "steps": 4}
    assert type(data["metrics"]["miou"]) is float and type(data["metrics"]["steps"]) is int
    assert plain({"t": torch.zeros(1)})["t"].shape == (1,)  # tensors pass through untouched


def test_the_shipped_model_loads_without_unpickling_code():
    data = load_checkpoint("models/student_tiny.pt")
    assert data["model_config"].name == "student_tiny" and isinstance(data["metrics"]["miou"], float)
