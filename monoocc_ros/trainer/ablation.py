"""`monoocc ablation` (what `make ablation` runs): the paper's claims at CPU scale, on the benchmark.

For each seed: the privileged teacher, then the student with everything (2D loss, ICCA,
distillation from that seed's teacher), without distillation, without the 2D loss and without
ICCA; the students all train the same number of steps, the teacher longer. Each run is an
ordinary `monoocc train` run under runs/ablation/<variant>_seed<S>/ and resumes from its last.pt.

What survives a session: each finished run writes `results/ablation/<variant>_seed<S>.json`
(validation metrics, steps, wall time, config), small and committed. A run whose JSON exists is
never trained again, so `make ablation` continues across sessions and machines where the last
one stopped. (A distilled variant needs its seed's teacher checkpoint: on a machine without
runs/, a teacher whose JSON exists is trained again, deterministically from its seed.) Once a
seed's distilled students are recorded, its teacher-output cache (~6 GB) is deleted: nothing
reads it again.

Controls (`monoocc_ros.trainer.controls`), so that no row is read without them: each finished
run's record also holds its other-image control (its validation scores with other worlds'
images), and `results/ablation/prior.json` the image-free prior's scores on the same frames.
A record written before the controls existed gets its control from its run's checkpoint when
that is still on this machine (and its scores match the record's), else the column says how
many runs were measured.

The table (mean ± standard deviation over seeds, the paper's direction beside each component)
goes to docs/results.md. Variants without a finished run are listed as not run, never filled in.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from monoocc_ros.checkpoint import load_checkpoint, sha256, training_unfinished
from monoocc_ros.classes import CLASS_FREQUENCIES, CLASS_NAMES, SMALL_OBJECT_CLASSES
from monoocc_ros.trainer.config import TrainConfig

# The six rarest classes by SemanticKITTI voxel frequency (derived, not hand-picked).
RARE_CLASSES = tuple(int(c) + 1 for c in np.argsort(CLASS_FREQUENCIES[1:])[:6])

VARIANTS: dict[str, tuple[str, dict | None, bool]] = {
    # name: (train config, model overrides, distilled from the teacher)
    "teacher": ("config/train/teacher_tiny.yaml", None, False),
    "student (full)": ("config/train/student_tiny.yaml", None, True),
    "student w/o distillation": ("config/train/student_tiny_nodistill.yaml", None, False),
    "student w/o 2D loss": ("config/train/student_tiny.yaml", {"loss": {"semantic_2d": 0.0}}, True),
    "student w/o ICCA": ("config/train/student_tiny.yaml", {"icca_layers": 0}, True),
}

# MonoOcc (ICRA 2024), SemanticKITTI val: what removing each component does to mIoU.
PAPER_DIRECTION = {
    "student w/o distillation": "lower (distillation: +0.6 to +1 mIoU in the paper)",
    "student w/o 2D loss": "lower (the 2D semantic loss helps)",
    "student w/o ICCA": "lower (ICCA: about +0.5 to +1 mIoU)",
    "teacher": "higher than the student (the privileged model)",
}
# Every committed record (results/ablation/) was trained at this peak learning rate. The shipped
# student's config has since moved to 1e-3 (2026-12-01), so the ablation pins its own: a new seed
# must be comparable with the recorded ones. Re-running it at another rate means removing the records.
ABLATION_LR = 5.0e-4
PRIOR_RECORD = "prior.json"  # the image-free prior's scores, beside the runs' records


def slug(variant: str, seed: int) -> str:
    return f"{variant.replace(' ', '_').replace('/', '').replace('(', '').replace(')', '')}_seed{seed}"


def finished_metrics(directory: Path) -> dict | None:
    """The final validation metrics of a run in `directory`, None unless it finished."""
    ckpt = directory / "last.pt"
    if not ckpt.is_file():
        return None
    data = load_checkpoint(ckpt)
    done = data.get("metrics") and data["metrics"].get("step") == data["step"]
    if not done or training_unfinished(data):
        return None
    return data["metrics"]


def run_config(variant: str, seed: int, data_root: str, steps: int, teacher_steps: int, out: Path) -> TrainConfig:
    path, overrides, distilled = VARIANTS[variant]
    cfg = TrainConfig.from_yaml(path, {"data_root": data_root})
    return replace(
        cfg,
        name=f"{variant} seed {seed}",
        seed=seed,
        lr=ABLATION_LR,
        max_steps=teacher_steps if variant == "teacher" else steps,
        out_dir=str(out / slug(variant, seed)),
        model_overrides=overrides,
        teacher_checkpoint=str(out / slug("teacher", seed) / "last.pt") if distilled else None,
    )


def train_variant(cfg: TrainConfig, device: str) -> tuple[dict, float]:
    """Train (or resume) one run to its end; (final metrics, wall seconds of this call)."""
    from monoocc_ros.trainer.engine import train

    last = cfg.output_dir / "last.pt"
    start = time.perf_counter()
    result = train(cfg, resume=str(last) if last.exists() else None, device=device)
    if result.get("interrupted"):  # Ctrl-C: last.pt holds the exact step; the next call resumes it
        raise KeyboardInterrupt
    metrics = finished_metrics(cfg.output_dir)
    if metrics is None:
        raise RuntimeError(f"{cfg.name}: training returned without a finished run in {cfg.output_dir}")
    return metrics, time.perf_counter() - start


def run(
    data_root: str,
    seeds: list[int],
    out_root: str = "runs/ablation",
    execute: bool = True,
    results: str = "docs/results.md",
    device: str = "cpu",
    steps: int = 1500,
    teacher_steps: int = 3000,
    records: str = "results/ablation",
    controls: bool | None = None,
) -> str:
    """Trains what is missing (`execute`), measures the controls that are missing (`controls`,
    default: when training; evaluation only, no training with execute=False), and writes the table."""
    out, record_dir = Path(out_root), Path(records)
    controls = execute if controls is None else controls
    if execute or controls:
        from monoocc_ros.trainer.engine import resolve_sequences

        resolve_sequences(data_root, None, "train")  # a missing or incomplete root fails here, not mid-run
    record_dir.mkdir(parents=True, exist_ok=True)
    prior = prior_record(record_dir / PRIOR_RECORD, data_root if controls else None)
    table: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        for variant in VARIANTS:
            record = record_dir / f"{slug(variant, seed)}.json"
            if not record.is_file() and execute:
                cfg = run_config(variant, seed, data_root, steps, teacher_steps, out)
                if cfg.teacher_checkpoint and finished_metrics(Path(cfg.teacher_checkpoint).parent) is None:
                    train_variant(run_config("teacher", seed, data_root, steps, teacher_steps, out), device)
                metrics, seconds = train_variant(cfg, device)
                payload = {"variant": variant, "seed": seed, "steps": cfg.max_steps, "wall_seconds_last_call": seconds,
                           "data_root": data_root, "metrics": metrics, "train_config": cfg.to_dict()}  # fmt: skip
                _write_json(record, payload)
            if record.is_file() and controls:
                add_controls(record, out / slug(variant, seed), data_root, device)
            if record.is_file():
                table[variant].append(json.loads(record.read_text()))
        if execute:
            release_teacher_cache(seed, out, record_dir)
    text = format_results(table, seeds, steps, teacher_steps, prior)
    Path(results).write_text(text)
    return text


def release_teacher_cache(seed: int, out: Path, record_dir: Path) -> int:
    """Deletes the seed's teacher-output cache (~6 GB on the benchmark) once every distilled
    variant of the seed has its record: nothing else reads it, and three seeds' caches left
    behind would fill a small disk. Returns the bytes freed (0 while a distilled run is missing,
    or when the teacher checkpoint is not on this machine)."""
    from monoocc_ros.cache import remove_teacher_caches, size_text

    distilled = [v for v, (_, _, uses_teacher) in VARIANTS.items() if uses_teacher]
    teacher = out / slug("teacher", seed) / "last.pt"
    if not teacher.is_file() or not all((record_dir / f"{slug(v, seed)}.json").is_file() for v in distilled):
        return 0
    freed = remove_teacher_caches(sha256(teacher))
    if freed:
        print(f"seed {seed}: freed {size_text(freed)} of teacher cache (its distilled students are done)", flush=True)
    return freed


def _write_json(path: Path, payload: dict) -> None:
    """Temporary file + rename: an interrupted write never leaves half a record."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    tmp.replace(path)


def prior_record(path: Path, data_root: str | None) -> dict | None:
    """The image-free prior's record: read when present and made from `data_root` (any root
    when None: `--no-train` only tabulates), else computed from `data_root` and written; None
    when absent and there is no data to compute it from."""
    if path.is_file():
        prior = json.loads(path.read_text())
        if data_root is None or prior.get("data_root") == data_root:
            return prior
    if data_root is None:
        return None
    from monoocc_ros.trainer.evaluate import prior_scores

    payload = {"data_root": data_root, "split": "val", "prior_split": "train",
               "metrics": prior_scores(data_root, "val", "train").summary()}  # fmt: skip
    _write_json(path, payload)
    return payload


def add_controls(record: Path, run_dir: Path, data_root: str, device: str) -> None:
    """Adds the other-image control to a record that lacks it, from the run's checkpoint, on
    `data_root` (this machine's copy of the data) and the validation sequences the run was
    scored on. Left as it is (and counted as not measured) when the checkpoint is gone or is
    not the run the record describes (its final validation scores differ)."""
    data = json.loads(record.read_text())
    if "controls" in data:
        return
    metrics = finished_metrics(run_dir)
    if metrics is None:
        return
    if any(abs(metrics[k] - data["metrics"][k]) > 1e-9 for k in ("completion_iou", "miou")):
        warnings.warn(f"{run_dir}/last.pt is not the run of {record} (other scores): no control added", stacklevel=2)
        return
    from monoocc_ros.trainer.evaluate import evaluate_other_image

    val = data.get("train_config", {}).get("val_sequences")
    scores, donors = evaluate_other_image(
        str(run_dir / "last.pt"), data_root, "val", tuple(val) if val else None, device
    )
    data["controls"] = {"other_image": scores.summary(), "image_donors": donors}
    _write_json(record, data)


def _stat(values: list[float]) -> str:
    if not values:
        return "not run"
    a = np.asarray(values)
    spread = f" ± {a.std(ddof=0):.2f}" if a.size > 1 else ""
    return f"{a.mean():.2f}{spread} (n={a.size})"


def _direction(table: dict[str, list[dict]], variant: str) -> str:
    """What this table shows for a component, against the full student, in words."""
    full = [r["metrics"]["miou"] for r in table.get("student (full)", [])]
    mine = [r["metrics"]["miou"] for r in table.get(variant, [])]
    if len(full) < 2 or len(mine) < 2:
        return "too few runs to say"
    diff = float(np.mean(mine) - np.mean(full))
    spread = float(max(np.std(mine), np.std(full)))
    word = "higher" if diff > 0 else "lower"
    if abs(diff) <= spread:
        return f"{diff:+.2f} mIoU, within the seed spread ({spread:.2f}): no effect shown"
    return f"{word} ({diff:+.2f} mIoU, beyond the seed spread {spread:.2f})"


def _rare(metrics: dict) -> float:
    return float(np.mean([metrics["class_iou"][c] for c in RARE_CLASSES]))


def format_results(
    table: dict[str, list[dict]],
    seeds: list[int],
    steps: int = 1500,
    teacher_steps: int = 3000,
    prior: dict | None = None,
) -> str:
    """The markdown of docs/results.md from the records (each {"metrics": ..., optionally
    "controls": {"other_image": ...}}) of each variant and the prior's record."""
    lines = [
        "# Ablation on the synthetic benchmark (CPU-size models)",
        "",
        "Generated by `make ablation` (`monoocc ablation`); every number comes from a finished training run",
        f"whose record is in results/ablation/. Seeds: {seeds}. Students {steps} steps, teacher {teacher_steps} steps,",
        "batch 1.",
        "Mean ± standard deviation over the seeds that ran; validation split of the benchmark (worlds 08, 11, 12),",
        "full 256x256x32 grid, official SSC definitions.",
        f"Small objects: {', '.join(CLASS_NAMES[c] for c in SMALL_OBJECT_CLASSES)}. Rare classes (six least frequent",
        f"in SemanticKITTI): {', '.join(CLASS_NAMES[c] for c in RARE_CLASSES)}.",
        'Controls (`monoocc eval --controls`): "other images" is the same run\'s mIoU when each frame is shown',
        "another world's image (the teacher keeps its LiDAR); the image-free prior is each voxel's most frequent",
        "training class, no image and no network. A row that does not beat them has learned the layout,",
        "not perception.",
        "",
        "| variant | completion IoU | mIoU | mIoU, other images | small-object IoU | rare-class IoU "
        "| paper: mIoU of this variant | here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, records in table.items():
        runs = [r["metrics"] for r in records]
        other = [r["controls"]["other_image"]["miou"] for r in records if "controls" in r]
        other_text = _stat(other) if other else ("not measured" if runs else "not run")
        paper = PAPER_DIRECTION.get(variant, "(reference)")
        here = _direction(table, variant) if variant in PAPER_DIRECTION else ""
        lines.append(
            f"| {variant} | {_stat([m['completion_iou'] for m in runs])} | {_stat([m['miou'] for m in runs])} "
            f"| {other_text} | {_stat([m['small_object_iou'] for m in runs])} "
            f"| {_stat([_rare(m) for m in runs])} | {paper} | {here} |"
        )
    if prior is None:
        lines.append("| image-free prior (control) | not computed | not computed | | | | (control) | |")
    else:
        m = prior["metrics"]
        lines.append(
            f"| image-free prior (control) | {m['completion_iou']:.2f} | {m['miou']:.2f} | (no image) "
            f"| {m['small_object_iou']:.2f} | {_rare(m):.2f} | (control) | |"
        )
    lines += ["", _margin(table)]
    return "\n".join(lines) + "\n"


def _margin(table: dict[str, list[dict]]) -> str:
    """The teacher's mIoU minus the full student's, seed by seed (the student distils from its
    own seed's teacher), in words."""
    teacher = {r.get("seed"): r["metrics"]["miou"] for r in table.get("teacher", [])}
    full = {r.get("seed"): r["metrics"]["miou"] for r in table.get("student (full)", [])}
    seeds = sorted(s for s in teacher.keys() & full.keys() if s is not None)
    if not seeds:
        return "Teacher's margin over the full student: no seed has both runs yet."
    diffs = np.asarray([teacher[s] - full[s] for s in seeds])
    spread = f" ± {diffs.std(ddof=0):.2f}" if diffs.size > 1 else ""
    per_seed = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(seeds, diffs, strict=True))
    mean = f"{diffs.mean():+.2f}{spread} mIoU"
    return f"Teacher's margin over the full student: {mean} (n={diffs.size}; per seed {per_seed})."
