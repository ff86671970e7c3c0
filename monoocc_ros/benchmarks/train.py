"""`monoocc bench train`: the cost of a training step, side by side, on real data.

Rows (each in its own process, one after the other, on the same frames):
- teacher: the privileged teacher (`teacher_tiny`: three frames, accumulated LiDAR, Lite2);
- student, undistilled;
- student, distilled, live teacher: the teacher runs in every step on its own frames and LiDAR
  (`teacher_cache: off`, how every distilled step ran before the cache);
- student, distilled, cached teacher: the teacher's outputs read from the cache
  (trainer/teacher_cache.py), built before step 1 and not timed;
- student, distilled, cached teacher and items: the decoded items read from the item cache
  (data/item_cache.py) as from the second epoch on, filled before and not timed. The rows above
  decode every item (`item_cache: off`), as the first epoch does.

A step is what `monoocc train` runs, data loading included: its time comes from the trainer's
own log (`frames_per_s` per step, batch 1), after `--warmup` steps. The teacher checkpoint for
the distilled rows is a randomly initialised one (the cost does not depend on the weights).
Never run this next to another CPU job: on 2 cores it doubles the figures.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from monoocc_ros.benchmarks.report import print_rows

_STUDENT = {"model": "student_tiny", "stage": "student", "item_cache": "off"}
ROWS = (
    ("teacher", {"model": "teacher_tiny", "stage": "teacher", "item_cache": "off"}),
    ("student, undistilled", _STUDENT),
    ("student, distilled, live teacher", {**_STUDENT, "teacher_cache": "off"}),
    ("student, distilled, cached teacher", {**_STUDENT, "teacher_cache": "auto"}),
    ("student, distilled, cached teacher and items", {**_STUDENT, "teacher_cache": "auto", "item_cache": "auto"}),
)


def measure(overrides: dict, steps: int, warmup: int) -> dict:
    """One row in this process: train `warmup + steps` steps, logging every step."""
    from monoocc_ros.trainer.config import TrainConfig
    from monoocc_ros.trainer.engine import train

    cfg = TrainConfig.from_dict({**overrides, "max_steps": warmup + steps, "log_every": 1, "save_every": 0,
                                 "eval_every": 0, "num_workers": 1, "lr": 1e-4, "warmup_iters": 0})  # fmt: skip
    train(cfg, device="cpu", progress=False, stop_after=warmup + steps)
    with open(cfg.output_dir / "metrics.csv") as f:
        fps = [float(r["frames_per_s"]) for r in csv.DictReader(f) if r.get("frames_per_s")]
    ms = [1000.0 / v for v in fps[warmup:]]
    return {"steps": len(ms), "median_ms": statistics.median(ms), "frames_per_s": 1000.0 / statistics.median(ms)}


def _teacher_checkpoint(path: Path) -> None:
    import torch

    from monoocc_ros.checkpoint import save_checkpoint
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.model.monoocc import MonoOcc

    torch.manual_seed(0)
    cfg = load_named_config("teacher_tiny")
    save_checkpoint(path, cfg, MonoOcc(cfg).state_dict())


def _fill_item_cache(overrides: dict) -> None:
    """Decode and cache every training item of a row's config before it is timed."""
    from monoocc_ros.trainer.config import TrainConfig
    from monoocc_ros.trainer.engine import item_cache_folder, make_dataset

    cfg = TrainConfig.from_dict(overrides)
    model_cfg = cfg.model_config()
    seqs = tuple(cfg.train_sequences or ())
    dataset = make_dataset(model_cfg, cfg.data_root, seqs, model_cfg.frame_offsets, item_cache=item_cache_folder(cfg))
    print(f"filling the item cache ({len(dataset)} frames, not timed)...", flush=True)
    for i in range(len(dataset)):
        dataset[i]


def run(data_root: str, sequence: str, steps: int, warmup: int, json_out: str | None) -> int:
    if not (Path(data_root) / "sequences" / sequence).is_dir():
        print(f"monoocc bench train: {data_root}/sequences/{sequence} does not exist (make data, or --data)",
              file=sys.stderr)  # fmt: skip
        return 2
    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        teacher = Path(tmp) / "teacher.pt"
        _teacher_checkpoint(teacher)
        for label, extra in ROWS:
            overrides = {"name": label.replace(" ", "_").replace(",", ""), "data_root": data_root,
                         "train_sequences": [sequence], "val_sequences": [sequence],
                         "out_dir": str(Path(tmp) / label.replace(" ", "_")), **extra}  # fmt: skip
            if "teacher_cache" in extra:
                overrides["teacher_checkpoint"] = str(teacher)
                if extra["teacher_cache"] == "auto":
                    overrides["teacher_cache"] = str(Path(tmp) / "teacher_cache")
            if extra["item_cache"] == "auto":
                overrides["item_cache"] = str(Path(tmp) / "items")
                _fill_item_cache(overrides)
            print(f"measuring: {label} ({warmup} + {steps} steps)...", flush=True)
            argv = [sys.executable, "-m", __name__, json.dumps(overrides), str(steps), str(warmup)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"row": label, "error": err})
                table.append([label, "failed", err, ""])
                continue
            result = {"row": label, **json.loads(lines[-1][2:])}
            rows.append(result)
            table.append([label, result["steps"], result["median_ms"], result["frames_per_s"]])
    print(f"\n## Training step, batch 1, CPU, {data_root} sequence {sequence}\n")
    return print_rows(["configuration", "steps timed", "median ms per step", "frames/s"], table, rows, json_out)


if __name__ == "__main__":  # one row, in its own process (see `run`)
    print("@@" + json.dumps(measure(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
