"""`monoocc bench memory`: peak memory of one training step and of inference, per config, batch 1.

A training step is what the trainer runs: forward, every loss term (distillation included for a
student, against teacher features given as a tensor, as a feature cache would give them: the
frozen teacher need not share the card), backward and an AdamW step. Inference is a forward
without gradients. Random weights, a KITTI-size frame prepared as the node does and the
Dataset's supervision shapes (`benchmarks/gpu.py`: `inputs`, `made_up_batch`; memory does not
depend on the values).

Each measurement runs in its own process, so its peak belongs to it alone: on the CPU the
process's peak resident memory (`ru_maxrss`; a fair proxy for the activations a GPU must hold),
on CUDA `torch.cuda.max_memory_allocated` under AMP, as the trainer runs. A watchdog stops a
process whose resident memory passes `--limit-gib` (a paper-size step without checkpointing
needs more than this 24 GiB machine has) and reports it as stopped above the limit.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from monoocc_ros.benchmarks.report import print_rows

DEFAULT_RUNS = (
    ("student_tiny", "train"),
    ("student_tiny", "infer"),
    ("student_small", "train"),
    ("student_small", "infer"),
    ("teacher_small", "infer"),
)
GIB = 2**30


def measure(name: str, mode: str, device: str, checkpointing: str, chunk: int) -> dict:
    import torch

    from monoocc_ros.benchmarks.gpu import inputs, made_up_batch
    from monoocc_ros.inference import resolve_device
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.model.losses import MonoOccLoss
    from monoocc_ros.model.memory import configure_memory
    from monoocc_ros.model.monoocc import MonoOcc
    from monoocc_ros.trainer.engine import target_key

    dev = resolve_device(device)
    cfg = load_named_config(name)
    torch.manual_seed(0)
    model = MonoOcc(cfg).to(dev).train(mode == "train")
    saving = configure_memory(model, checkpointing, chunk)
    img, proj = inputs(cfg, 1, dev)
    cuda = dev.type == "cuda"
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        if mode == "infer":
            with torch.inference_mode():
                model.predict_grid(img, proj)
        else:
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=cuda)
            out = model(img, proj)
            batch = made_up_batch(cfg, 1, dev)
            teacher = None  # a student distils from cached teacher features: a tensor, no teacher model
            if not cfg.is_teacher:
                teacher = {"voxel_features": torch.randn_like(out["voxel_features"]), "logits": out["logits"].detach()}
            loss_fn = MonoOccLoss(cfg.loss).to(dev)
            terms = loss_fn(out, batch, target_key(cfg.logits_scale), target_key(cfg.query_scale), teacher)
            scaler.scale(terms["total"].float()).backward()
            scaler.step(optimizer)
            scaler.update()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / GIB if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "config": name,
        "mode": mode,
        "device": str(dev) + (" AMP" if cuda else ""),
        "checkpointing": "on" if saving and mode == "train" else "off",
        "peak_GiB": peak,
        "model_GiB": rss_model if not cuda else None,
        "seconds": seconds,
    }


def _watch(cmd: list[str], limit_gib: float) -> tuple[int, str, str, float]:
    """Run `cmd`; kill it if its resident memory passes the limit. Returns (returncode, stdout,
    stderr, highest RSS seen in GiB); returncode -9 means the watchdog stopped it."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        highest, stopped = 0.0, False
        while proc.poll() is None:
            highest = max(highest, _rss_gib(proc.pid))
            if highest > limit_gib:
                proc.kill()
                stopped = True
                proc.wait()
                break
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        return (-9 if stopped else proc.returncode), out.read(), err.read(), highest


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def main(
    runs: list[tuple[str, str]] | None,
    device: str,
    checkpointing: str,
    chunk: int,
    limit_gib: float,
    json_out: str | None,
) -> int:
    rows: list[dict[str, Any]] = []
    for name, mode in runs or list(DEFAULT_RUNS):
        cmd = [sys.executable, "-m", "monoocc_ros.benchmarks.memory", name, mode, device, checkpointing, str(chunk)]
        print(f"measuring {name} {mode} on {device} (checkpointing {checkpointing})...", file=sys.stderr, flush=True)
        code, out, err, highest = _watch(cmd, limit_gib)
        if code == -9:
            rows.append({"config": name, "mode": mode, "device": device, "checkpointing": checkpointing,
                         "stopped_above_GiB": limit_gib, "highest_seen_GiB": highest})  # fmt: skip
        elif code != 0:
            print(err[-2000:], file=sys.stderr)
            rows.append({"config": name, "mode": mode, "device": device, "error": err.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(out.strip().splitlines()[-1]))
    header = ["config", "mode", "device", "checkpointing", "peak GiB", "after model build GiB", "seconds"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["config"], r["mode"], r["device"], "", "error: " + r["error"], "", ""])
        elif "stopped_above_GiB" in r:
            table.append([r["config"], r["mode"], r["device"], r["checkpointing"],
                          f"> {r['stopped_above_GiB']:.1f} (stopped)", "", ""])  # fmt: skip
        else:
            model = "" if r["model_GiB"] is None else r["model_GiB"]
            table.append([r["config"], r["mode"], r["device"], r["checkpointing"], r["peak_GiB"], model, r["seconds"]])
    return print_rows(header, table, rows, json_out)


if __name__ == "__main__":
    name, mode, device, checkpointing, chunk = sys.argv[1:6]
    print(json.dumps(measure(name, mode, device, checkpointing, int(chunk))))
