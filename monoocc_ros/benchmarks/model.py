"""`monoocc bench model`: per config, parameters, forward latency and peak memory.

Each config is measured in its own subprocess so that peak memory (max RSS on the CPU, peak
allocated on CUDA) belongs to that config alone. Input: a KITTI-size frame (1241x376) prepared as
the node prepares it (rescaled by the config's image_scale); the timed part is the network's
forward pass, median over `repeats` runs after one warm-up run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

from monoocc_ros.benchmarks.report import print_rows

DEFAULT_CONFIGS = ("student_tiny", "teacher_tiny", "student_small", "teacher_small")
# Paper-size configs take tens of seconds per CPU forward; fewer repeats keep the run bounded.
CPU_REPEATS = {"student_tiny": 20, "teacher_tiny": 20, "student_small": 3, "teacher_small": 1}


def measure(name: str, device: str, repeats: int, half: bool) -> dict:
    import torch

    from monoocc_ros.geometry import KITTI_CALIB
    from monoocc_ros.inference import prepare_input, resolve_device
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.model.monoocc import MonoOcc

    dev = resolve_device(device)
    cfg = load_named_config(name)
    torch.manual_seed(0)
    model = MonoOcc(cfg).to(dev).eval()
    params = sum(p.numel() for p in model.parameters())
    image = np.random.default_rng(0).integers(0, 255, (376, 1241, 3), dtype=np.uint8)
    prep = prepare_input(cfg, image, KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    k = len(cfg.frame_offsets)
    img = torch.from_numpy(prep.image)[None, None].expand(1, k, -1, -1, -1).contiguous().to(dev)
    proj = torch.from_numpy(prep.projection)[None, None].expand(1, k, 3, 4).contiguous().to(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        model(img, proj)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(img, proj)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "config": name,
        "device": str(dev) + (" fp16" if half else ""),
        "params_M": params / 1e6,
        "input": f"{prep.image.shape[2]}x{prep.image.shape[1]} x{k}",
        "n": repeats,
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "fps": 1000.0 / float(np.median(times)),
        "peak_MiB": peak,
        "rss_before_MiB": rss_before,
    }


def main(configs: list[str] | None, device: str, repeats: int | None, half: bool, json_out: str | None) -> int:
    rows = []
    for name in configs or list(DEFAULT_CONFIGS):
        n = repeats or (20 if device.startswith("cuda") else CPU_REPEATS.get(name, 20))
        cmd = [sys.executable, "-m", "monoocc_ros.benchmarks.model", name, device, str(n), "1" if half else "0"]
        print(f"measuring {name} on {device} ({n} runs)...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append({"config": name, "device": device, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    header = ["config", "device", "params (M)", "input", "n", "median ms", "p90 ms", "frames/s", "peak MiB"]
    table = [
        [
            r["config"],
            r["device"],
            r["params_M"],
            r["input"],
            r["n"],
            r["median_ms"],
            r["p90_ms"],
            r["fps"],
            r["peak_MiB"],
        ]
        if "error" not in r
        else [r["config"], r["device"], "error: " + r["error"], "", "", "", "", "", ""]
        for r in rows
    ]
    return print_rows(header, table, rows, json_out)


if __name__ == "__main__":
    name, device, n, half = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    print(json.dumps(measure(name, device, n, half)))
