"""GPU figures (`scripts/bench_gpu.sh` runs this on a CUDA machine): inference frames/s and peak
memory at batch 1 in fp32 and fp16, and peak training memory at batch 1 with AMP, for the
student alone and for online distillation from a frozen teacher.

Nothing is read from disk but the model configs: weights are random (speed and memory do not
depend on them) and the training batch is made up with the Dataset's shapes (voxel targets at the
output and query grids, sparse 2D labels and depth). Runs on the CPU too (slowly), which is how
the tests keep it working on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from monoocc_ros.benchmarks.report import markdown_table
from monoocc_ros.geometry import KITTI_CALIB
from monoocc_ros.model.config import ModelConfig, load_named_config
from monoocc_ros.model.losses import MonoOccLoss
from monoocc_ros.model.monoocc import LABEL_STRIDE, MonoOcc

GIB = 2**30


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / GIB if dev.type == "cuda" else float("nan")


def inputs(cfg: ModelConfig, batch: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and KITTI projections, prepared as the node prepares a KITTI frame:
    (B, K, 3, H, W), (B, K, 3, 4)."""
    from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH
    from monoocc_ros.inference import prepare_input

    blank = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), np.uint8)
    prepared = prepare_input(cfg, blank, KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    k = len(cfg.frame_offsets)
    images = torch.rand(batch, k, *prepared.image.shape, device=dev)
    proj = torch.from_numpy(prepared.projection).to(dev).expand(batch, k, 3, 4).contiguous()
    return images, proj


def made_up_batch(cfg: ModelConfig, batch: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """The Dataset's supervision with its shapes and sparsity (random classes)."""
    from monoocc_ros.inference import network_input_size
    from monoocc_ros.trainer.engine import target_key

    g = torch.Generator(device="cpu").manual_seed(0)
    out = {}
    for scale in {1, cfg.output_scale, cfg.logits_scale, cfg.query_scale}:
        shape = tuple(s // scale for s in cfg.grid.shape)
        labels = torch.randint(0, cfg.num_classes, (batch, *shape), generator=g)
        labels[torch.rand(labels.shape, generator=g) < 0.7] = 0  # mostly empty, as the real grids
        out[target_key(scale)] = labels.to(dev)
    h, w = (s // LABEL_STRIDE for s in network_input_size(cfg))
    sparse = torch.rand(batch, h, w, generator=g) < 0.05  # projected LiDAR covers a few % of pixels
    labels_2d = torch.randint(0, cfg.num_classes, (batch, h, w), generator=g)
    out["labels_2d"] = torch.where(sparse, labels_2d, torch.full_like(labels_2d, 255)).to(dev)
    out["depth_2d"] = torch.where(sparse, 2 + 50 * torch.rand(batch, h, w, generator=g), torch.zeros(batch, h, w)).to(
        dev
    )
    return out


def measure_inference(name: str, dev: torch.device, half: bool, runs: int) -> dict:
    torch.manual_seed(0)
    model = MonoOcc(load_named_config(name)).to(dev).eval()
    images, proj = inputs(model.cfg, 1, dev)
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        for _ in range(3):
            model.predict_grid(images, proj)
        _reset_peak(dev)
        for _ in range(runs):
            _sync(dev)
            t0 = time.perf_counter()
            model.predict_grid(images, proj)
            _sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    return {"config": name, "precision": "fp16" if half else "fp32", "median_ms": med, "fps": 1000 / med,
            "peak_GiB": _peak_gib(dev)}  # fmt: skip


def measure_training(name: str, teacher: str | None, dev: torch.device, steps: int) -> dict:
    """Peak memory and step time of forward + loss + backward + AdamW step at batch 1, AMP on CUDA."""
    from monoocc_ros.model.memory import configure_memory

    torch.manual_seed(0)
    model = MonoOcc(load_named_config(name)).to(dev).train()
    configure_memory(model, "auto")  # as the trainer's default: on for the paper-size query grid
    teacher_model = MonoOcc(load_named_config(teacher)).to(dev).eval() if teacher else None
    loss_fn = MonoOccLoss(model.cfg.loss).to(dev)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    from monoocc_ros.trainer.engine import target_key

    batch = made_up_batch(model.cfg, 1, dev)
    images, proj = inputs(model.cfg, 1, dev)
    t_args: tuple = inputs(teacher_model.cfg, 1, dev) if teacher_model else ()
    if teacher_model is not None and teacher_model.cfg.privileged_lidar:  # accumulated LiDAR, ~5 % of voxels hit
        hits = torch.poisson(torch.full((1, *teacher_model.cfg.query_grid.shape), 0.05, device=dev))
        t_args = (*t_args, torch.log1p(hits))
    times, losses = [], []
    for i in range(steps + 1):  # the first step allocates optimizer state: not timed, but in the peak
        if i == 1:
            _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            out = model(images, proj)
            t_out = None
            if teacher_model is not None:
                with torch.no_grad():
                    t_out = teacher_model(*t_args)
            terms = loss_fn(out, batch, target_key(model.cfg.logits_scale), target_key(model.cfg.query_scale), t_out)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        scaler.step(optimizer)
        scaler.update()
        _sync(dev)
        losses.append(float(terms["total"].detach()))
        if i > 0:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"config": name + (f" + frozen {teacher}" if teacher else ""), "amp": amp,
            "step_ms": statistics.median(times), "peak_GiB": _peak_gib(dev), "losses": losses}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
        torch.backends.cudnn.benchmark = True
    inf = []
    for cfg in ("student_small", "student_tiny"):
        for half in (False, True) if dev.type == "cuda" else (False,):
            inf.append(measure_inference(cfg, dev, half, args.runs))
            print(f"inference {cfg} {'fp16' if half else 'fp32'}: {inf[-1]['fps']:.1f} frames/s", flush=True)
    train = []
    for student, teacher in (("student_small", None), ("student_small", "teacher_small")):
        train.append(measure_training(student, teacher, dev, args.steps))
        print(f"training {train[-1]['config']}: peak {train[-1]['peak_GiB']:.2f} GiB", flush=True)
    print("\n## Inference, batch 1\n")
    rows = [[r["config"], r["precision"], r["median_ms"], r["fps"], r["peak_GiB"]] for r in inf]
    print(markdown_table(["config", "precision", "median ms", "frames/s", "peak GiB"], rows))
    print("\n## Training step, batch 1 (AMP on CUDA; forward, loss, backward, AdamW)\n")
    print(markdown_table(["run", "step ms", "peak GiB", "fits 12 GB"],
                         [[r["config"], r["step_ms"], r["peak_GiB"], "yes" if r["peak_GiB"] * GIB < 12e9 else "no"]
                          for r in train]))  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"inference": inf, "training": train}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
