"""Static checks of the launch file, the params file and the README against the node's one
parameter table; start-up validation of the node process."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT
from monoocc_ros.ros.params import PARAMS, validate_params

LAUNCH = REPO_ROOT / "launch" / "occ.launch.py"


def test_launch_file_names_only_things_that_exist():
    tree = ast.parse(LAUNCH.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    declared = {c.args[0].value for c in calls if getattr(c.func, "id", "") == "DeclareLaunchArgument" and c.args}
    assert declared == {
        "image_topic",
        "camera_info_topic",
        "params_file",
        "checkpoint",
        "backend",
        "device",
        "use_sim_time",
        "rviz",
    }
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"occupancy_node", "monoocc_ros", "~/input/image", "~/input/camera_info"} <= strings
    assert (REPO_ROOT / "config" / "occ.yaml").is_file() and (REPO_ROOT / "config" / "occ.rviz").is_file()
    assert "occ.yaml" in strings and "occ.rviz" in strings
    # the executable is installed under lib/monoocc_ros by CMake and is a console script for pip
    assert "scripts/occupancy_node" in (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "occupancy_node = monoocc_ros.ros.main:main" in (REPO_ROOT / "setup.py").read_text()
    names = {p.name for p in PARAMS} | {"use_sim_time"}
    dict_keys = {
        k.value for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if isinstance(k, ast.Constant)
    }
    assert dict_keys <= names, dict_keys - names


def test_launch_file_imports_when_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not installable from PyPI here")
    import importlib.util

    spec = importlib.util.spec_from_file_location("occ_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.generate_launch_description() is not None


def test_params_file_matches_the_parameter_table():
    data = yaml.safe_load((REPO_ROOT / "config" / "occ.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == {p.name for p in PARAMS}
    for p in PARAMS:
        assert (
            params[p.name] == pytest.approx(p.default)
            if isinstance(p.default, float | list)
            else params[p.name] == p.default
        ), p.name
    assert validate_params(params) == []


def test_readme_documents_every_parameter_and_topic():
    readme = (REPO_ROOT / "README.md").read_text()
    for p in PARAMS:
        assert f"`{p.name}`" in readme, p.name
    for topic in (
        "~/input/image",
        "~/input/camera_info",
        "~/output/voxels",
        "~/output/markers",
        "~/output/points",
        "/diagnostics",
    ):
        assert f"`{topic}`" in readme, topic


def test_validation_messages():
    errs = validate_params({"device": "tpu", "grid_to_camera": [1.0] * 3, "sync_slop": -1, "confidence_threshold": 2})
    text = "; ".join(errs)
    assert "device must be" in text and "16 finite numbers" in text and "sync_slop must be >= 0" in text
    assert "confidence_threshold must be in [0, 1], got 2" in text
    assert validate_params({"outside_view": "guess"}) == ["outside_view must be one of unknown, predict, got 'guess'"]
    errs = validate_params({"backend": "tensorrt"}) + validate_params(
        {"backend": "onnxruntime", "half_precision": True}
    )
    errs += validate_params({"backend": "torch", "checkpoint": "models/x.onnx"})
    assert len(errs) == 3 and "backend must be torch or onnxruntime" in errs[0] and "half_precision" in errs[1]
    assert "needs backend onnxruntime" in errs[2]


def test_node_help_and_bad_parameter_at_startup(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "monoocc_ros.ros.main", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "processing_budget_ms" in out.stdout and "~/output/voxels" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "monoocc_ros.ros.main", "--ros-args", "-p", "device:=tpu", "-p", "sync_slop:=-1.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert (
        "invalid parameters: device must be auto, cpu, cuda or cuda:N, got 'tpu'; sync_slop must be >= 0" in bad.stderr
    )
    params = tmp_path / "params.yaml"
    params.write_text("ros__parameters: [unclosed\n")
    for args, expected in (
        (["--params-file", str(params)], "params.yaml"),  # not ROS parameter YAML
        (["-p", "sync_slop:=1"], "expecting type 'DOUBLE'"),  # an integer where a double is declared
    ):
        bad = subprocess.run([sys.executable, "-m", "monoocc_ros.ros.main", "--ros-args", *args],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("occupancy_node: ") and expected in lines[0], lines


def test_cuda_only_settings_without_cuda_refuse_to_start():
    from monoocc_ros.ros.params import cuda_errors

    assert cuda_errors({"device": "cuda", "half_precision": False}, cuda_available=True) == []
    assert cuda_errors({"device": "auto", "half_precision": True}, cuda_available=True) == []
    assert "device 'cuda:1' needs CUDA" in cuda_errors({"device": "cuda:1"}, cuda_available=False)[0]
    assert "half_precision needs CUDA" in cuda_errors({"device": "auto", "half_precision": True}, False)[0]
    assert "but device is cpu" in cuda_errors({"device": "cpu", "half_precision": True}, True)[0]
    assert cuda_errors({"device": "auto", "half_precision": False}, cuda_available=False) == []
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the node would start")
    bad = subprocess.run(
        [sys.executable, "-m", "monoocc_ros.ros.main", "--ros-args", "-p", "device:=cuda"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "invalid parameters: device 'cuda' needs CUDA, which this machine does not have" in bad.stderr
