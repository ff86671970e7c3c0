"""The benchmark helpers measure what they claim: the memory sampler sees an allocation, ONNX
Runtime node names map to the right stage, and the GPU script's training step runs (on the CPU
here) with the Dataset's supervision shapes."""

from __future__ import annotations

import os

import numpy as np
import torch

from monoocc_ros.benchmarks.backends import PeakRSS, _scope
from monoocc_ros.benchmarks.gpu import made_up_batch, measure_inference, measure_training
from monoocc_ros.benchmarks.soak import node_rss_mib
from monoocc_ros.model.config import load_named_config


def test_peak_rss_sees_a_transient_allocation():
    with PeakRSS() as quiet:
        pass
    with PeakRSS() as busy:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block.sum()
        del block
    assert busy.extra_mib > 150
    assert quiet.extra_mib < 20
    assert 10 < node_rss_mib(os.getpid()) < 100_000


def test_onnxruntime_node_names_map_to_stages():
    assert _scope("/backbone/layer3/layer3.1/conv2/Conv_kernel_time") == "backbone"
    assert _scope("/transformer/self_attn.0/attn/GridSample_kernel_time") == "self_attn"
    assert _scope("/transformer/icca.0/ffn/ffn.0/MatMul_kernel_time") == "icca"
    assert _scope("/transformer/cross.0/attn/Mul_kernel_time") == "cross"
    assert _scope("/transformer/ScatterElements_kernel_time") == "transformer"
    assert _scope("/proposal/unet/enc0/enc0.0/Conv_kernel_time") == "proposal"
    assert _scope("SkipLayerNormalization_token_12_kernel_time") == "other"


def test_gpu_benchmark_runs_on_the_cpu_with_dataset_shapes():
    cfg = load_named_config("student_tiny")
    batch = made_up_batch(cfg, 1, torch.device("cpu"))
    assert batch["target_2"].shape == (1, 128, 128, 16) and batch["target_4"].shape == (1, 64, 64, 8)
    assert batch["labels_2d"].shape == batch["depth_2d"].shape == (1, 47, 155)
    assert 0.02 < float((batch["depth_2d"] > 0).float().mean()) < 0.08  # sparse, as projected LiDAR
    inf = measure_inference("student_tiny", torch.device("cpu"), False, runs=1)
    assert inf["fps"] > 0 and np.isnan(inf["peak_GiB"])
    train = measure_training("student_tiny", "teacher_tiny", torch.device("cpu"), steps=1)
    assert len(train["losses"]) == 2 and all(np.isfinite(train["losses"]))
    assert train["config"] == "student_tiny + frozen teacher_tiny"


def test_bench_memory_reports_a_step_and_stops_a_run_over_the_limit(tmp_path):
    """`monoocc bench memory`: a student_tiny training step's peak (each run in its own process)
    lies above the memory after building the model; a run over --limit-gib is stopped, not fatal."""
    import json
    import subprocess
    import sys

    out = tmp_path / "mem.json"
    cmd = [sys.executable, "-m", "monoocc_ros.cli", "bench", "memory", "--runs", "student_tiny:train"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())
    assert row["mode"] == "train" and row["checkpointing"] == "off"  # auto: off for a 64x64x8 query grid
    assert row["peak_GiB"] > row["model_GiB"] + 0.1  # activations, gradients and AdamW state on top
    proc = subprocess.run([*cmd, "--limit-gib", "0.3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())
    assert row["stopped_above_GiB"] == 0.3 and "(stopped)" in proc.stdout
    bad = subprocess.run([*cmd[:-1], "student_tiny:fly"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "modes must be train or infer" in bad.stderr
