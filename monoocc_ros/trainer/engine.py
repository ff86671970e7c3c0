"""The training loop: one process or many through PyTorch DistributedDataParallel (launch with
`torchrun --nproc_per_node N -m monoocc_ros.cli train ...`; gloo on the CPU, NCCL on CUDA),
AMP on CUDA, gradient accumulation, exact resume, tqdm progress, TensorBoard and CSV logs.

Exact resume: the shuffling of every epoch is a function of (seed, epoch) (DistributedSampler),
a checkpoint stores the position inside the epoch, the optimizer, scheduler, scaler and the RNG
state, so a resumed run sees the same batches with the same dropout masks as an uninterrupted one
(on the CPU with the same thread count the loss curve continues bit for bit).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from monoocc_ros.checkpoint import (
    CheckpointError,
    build_model_from_checkpoint,
    check_weights_match,
    config_differences,
    load_checkpoint,
    save_checkpoint,
    sha256,
    training_unfinished,
)
from monoocc_ros.data.dataset import (
    SPLITS_FILE,
    DatasetConfig,
    SemanticKITTIDataset,
    list_sequences,
    load_splits,
)
from monoocc_ros.data.formats import FILE_GRID
from monoocc_ros.geometry import GridSpec
from monoocc_ros.inference import resolve_device
from monoocc_ros.metrics import RegionMetrics, SSCScores
from monoocc_ros.model.config import ConfigError, ModelConfig
from monoocc_ros.model.losses import MonoOccLoss
from monoocc_ros.model.memory import configure_memory
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.paths import cache_dir
from monoocc_ros.preprocess import network_input_size
from monoocc_ros.trainer.config import TrainConfig
from monoocc_ros.trainer.teacher_cache import teacher_outputs

if TYPE_CHECKING:
    from monoocc_ros.depth_metrics import DepthMetrics
    from monoocc_ros.trainer.controls import OtherImageDataset
    from monoocc_ros.trainer.teacher_cache import WithTeacherOutputs


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def target_key(scale: int) -> str:
    return "target" if scale == 1 else f"target_{scale}"


def resolve_sequences(root: str, wanted: tuple[str, ...] | None, split: str) -> tuple[str, ...]:
    """The sequences to use: `wanted` when given, else the split's from `ROOT/splits.yaml`, else
    the SemanticKITTI split's that exist under the root. A SemanticKITTI split may be partly
    present (a sample of the dataset); a splits.yaml was written for this root, so a sequence it
    names that is missing is a mistake (a typo, 8 for "08") and an error."""
    present = list_sequences(root)
    if wanted is not None:
        missing = [s for s in wanted if s not in present]
        if missing:
            raise FileNotFoundError(f"sequences {missing} not found under {root}/sequences (have {present})")
        return tuple(wanted)
    splits = load_splits(root)
    custom = (Path(root) / SPLITS_FILE).is_file()
    source = f"{Path(root) / SPLITS_FILE}" if custom else "the SemanticKITTI splits"
    if split not in splits:
        raise ValueError(f"split {split!r} is not defined in {source} (it defines {sorted(splits)})")
    missing = [s for s in splits[split] if s not in present]
    if custom and missing:
        raise FileNotFoundError(
            f"{source}: {split} sequences {missing} do not exist under {root}/sequences (have {present})"
        )
    chosen = tuple(s for s in splits[split] if s in present)
    if not chosen:
        raise FileNotFoundError(
            f"none of the {split} split's sequences {splits[split]} exist under {root}/sequences (have {present}); "
            "name the sequences explicitly (--sequences, or train_sequences/val_sequences in the config), "
            f"or list them in {Path(root) / SPLITS_FILE}"
        )
    return chosen


def make_dataset(
    model_cfg: ModelConfig,
    root: str,
    sequences: tuple[str, ...],
    offsets: tuple[int, ...],
    lidar_offsets: tuple[int, ...] = (),
    item_cache: str | None = None,
) -> SemanticKITTIDataset:
    """The Dataset a model trains or is scored on; `offsets` / `lidar_offsets`: the frames and
    accumulated scans a teacher sees (its own, or the one distilling into this student);
    `item_cache`: a folder for decoded items (data/item_cache.py)."""
    if model_cfg.grid != FILE_GRID:
        raise ConfigError(
            f"model {model_cfg.name!r} fills {model_cfg.grid}, but {root} holds SemanticKITTI files on "
            f"{FILE_GRID}: a model is trained and scored on data of its own grid"
        )
    scales = sorted({model_cfg.output_scale, model_cfg.logits_scale, model_cfg.query_scale} - {1})
    return SemanticKITTIDataset(
        DatasetConfig(
            root=root,
            sequences=sequences,
            image_size=network_input_size(model_cfg),
            image_scale=model_cfg.image_scale,
            frame_offsets=offsets if len(offsets) > 1 else (),
            downsample=tuple(scales),
            lidar_offsets=lidar_offsets,
            lidar_scale=model_cfg.query_scale,
            item_cache=item_cache,
        )
    )


def item_cache_folder(cfg: TrainConfig) -> str | None:
    """`item_cache` of a training config as a folder (None: off)."""
    if cfg.item_cache == "off":
        return None
    return str(cache_dir("items")) if cfg.item_cache == "auto" else cfg.item_cache


def model_inputs(batch: dict, cfg: ModelConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The model's arguments from a batch: (images (B, K, 3, H, W), projections (B, K, 3, 4)) for
    a student (K=1) or a teacher, and a privileged teacher's accumulated LiDAR (B, Xq, Yq, Zq)."""
    if len(cfg.frame_offsets) > 1:
        views = (batch["other_images"].to(device), batch["other_projections"].to(device))
    else:
        views = (batch["image"][:, None].to(device), batch["projection"][:, None].to(device))
    if cfg.privileged_lidar:
        return (*views, batch["lidar_evidence"].to(device))
    return views


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def expand_labels(labels: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """(B, X, Y, Z) labels at a model's output grid -> (B, *grid.shape) on its full grid."""
    from monoocc_ros.model.head import repeat_voxels

    return repeat_voxels(labels, grid.shape[0] // labels.shape[1])


@torch.inference_mode()
def evaluate(
    model: MonoOcc,
    dataset: SemanticKITTIDataset | OtherImageDataset,
    device: torch.device,
    predictions_root: Path | None = None,
    progress: bool = True,
    amp: bool = False,
    desc: str = "eval",
    depth: DepthMetrics | None = None,
) -> SSCScores:
    """SSC metrics on the full grid (256x256x32; coarser outputs are repeated), as the official
    evaluator, with the same scores inside the camera's view beside them (`.in_view`); optionally
    writes predictions as SemanticKITTI raw-id .label files. `dataset`: a SemanticKITTIDataset or
    a wrapper yielding the same items and `view_mask` (the controls' other-image one). `depth`:
    given, it also accumulates the depth head's errors against each frame's LiDAR depth."""
    from monoocc_ros.classes import train_to_raw
    from monoocc_ros.data import formats as F

    cfg = model.cfg
    model.eval()
    metrics = RegionMetrics()
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0, generator=torch.Generator())
    # Predictions go to a temporary folder and move into place only when every frame is done:
    # an interrupted or failed run leaves no partial set that looks like a finished one.
    partial = (
        None
        if predictions_root is None
        else predictions_root.with_name(f"{predictions_root.name}.partial-{os.getpid()}")
    )
    try:
        for batch in tqdm(loader, desc=desc, unit="frame", disable=not progress, leave=False):
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
                labels, _, depth_map = model.predict_grid_and_depth(*model_inputs(batch, cfg, device))
            if depth is not None:
                depth.update(depth_map[0].float().cpu().numpy(), batch["depth_2d"][0].numpy(), cfg.depth_max)
            pred = expand_labels(labels, cfg.grid).cpu().numpy().astype("uint8")
            seq, frame = batch["meta"]["sequence"][0], int(batch["meta"]["frame"][0])
            view = dataset.view_mask(seq)[None]
            metrics.update(pred, batch["target"].numpy(), batch["invalid"].numpy(), view)
            if partial is not None:
                out = partial / "sequences" / seq / "predictions"
                out.mkdir(parents=True, exist_ok=True)
                F.write_voxel_labels(out / f"{frame:06d}.label", train_to_raw(pred[0]))
        if partial is not None and predictions_root is not None:
            for file in sorted(partial.rglob("*.label")):
                target = predictions_root / file.relative_to(partial)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
    return metrics.scores()


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """Set by the first Ctrl-C (SIGINT): the loop finishes its step, saves last.pt and returns. A
    second Ctrl-C interrupts at once. Only in the main thread (where Python delivers signals);
    the previous handler is back when training returns."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()
        print("\nCtrl-C: saving after this step (again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _batches(loader: DataLoader, interrupt: threading.Event):
    """The loader's batches; after a Ctrl-C its workers (which got the signal too) may be gone,
    which ends the epoch instead of failing it."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if interrupt.is_set():
                return
            raise
        yield batch


class _CSVLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        if self.fields is None:
            if not new:
                with self.path.open() as f:
                    self.fields = next(csv.reader(f), None)
            self.fields = self.fields or list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:  # a new column (e.g. first validation): rewrite the header in place
            rows = list(csv.DictReader(self.path.open())) if not new else []
            self.fields += extra
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, self.fields)
                w.writeheader()
                w.writerows(rows)
            new = False
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            if new:
                w.writeheader()
            w.writerow(row)


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "step", "epoch", "step_in_epoch")


def load_resumable(path: str) -> dict:
    """A training checkpoint to resume from; an exported model (weights only) is refused with the
    reason, before any data is read."""
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is an exported model without training state ({', '.join(missing)}); resume from the run's "
            "training checkpoint (runs/NAME/last.pt)"
        )
    return ckpt


def read_init_weights(path: str, model_cfg: ModelConfig) -> dict:
    """The weights of checkpoint `path` (a training checkpoint or an exported model) that start a
    fine-tuning run, checked against the run's architecture before any long work: weights that
    do not fit are a clear error naming the keys. Settings that change no weight (dropout,
    thresholds, loss weights) may differ: a fine-tune may change them."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_weights {path} does not exist")
    data = load_checkpoint(path, map_location="cpu")
    if data["model_config"].is_teacher != model_cfg.is_teacher:
        kind = "a multi-frame teacher" if data["model_config"].is_teacher else "a monocular student"
        raise CheckpointError(f"init_weights {path} is {kind}; this run trains {model_cfg.name}")
    check_weights_match(MonoOcc(model_cfg), data["weights"], f"init_weights {path}")
    return {"weights": data["weights"], "sha256": sha256(path)}


def load_teacher(cfg: TrainConfig, model_cfg: ModelConfig, dev: torch.device) -> MonoOcc | None:
    """The frozen teacher named by `teacher_checkpoint` (None without one), checked against the student."""
    if not cfg.teacher_checkpoint:
        return None
    if not (model_cfg.loss.distill_feature or model_cfg.loss.distill_logit):
        raise ValueError(
            f"teacher_checkpoint is set but {model_cfg.name}'s loss.distill_feature and loss.distill_logit are 0: "
            "nothing would be distilled (set a weight, or drop the teacher)"
        )
    teacher, tdata = build_model_from_checkpoint(cfg.teacher_checkpoint, map_location="cpu")
    unfinished = training_unfinished(tdata)
    if unfinished:  # e.g. runs/teacher_tiny/last.pt while that run still trains: a moving target
        raise ValueError(
            f"teacher {cfg.teacher_checkpoint} is an unfinished run ({unfinished}): finish it with "
            "`monoocc train --resume`, or `monoocc export` it to distil from it as it is"
        )
    tc = tdata["model_config"]
    if (tc.embed_dim, tc.query_scale, tc.logits_scale, tc.grid) != (
        model_cfg.embed_dim,
        model_cfg.query_scale,
        model_cfg.logits_scale,
        model_cfg.grid,
    ):
        raise ValueError(
            f"teacher {tc.name} (embed_dim {tc.embed_dim}, query_scale {tc.query_scale}, logits at scale "
            f"{tc.logits_scale}) cannot teach {model_cfg.name} (embed_dim {model_cfg.embed_dim}, query_scale "
            f"{model_cfg.query_scale}, logits at scale {model_cfg.logits_scale})"
        )
    return teacher.to(dev).eval().requires_grad_(False)


def training_set(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    teacher: MonoOcc | None,
    teacher_sha: str | None,
    dev: torch.device,
    info: DistInfo,
) -> tuple[SemanticKITTIDataset | WithTeacherOutputs, MonoOcc | None]:
    """The training Dataset, and the teacher to run live in each step: None when there is no
    teacher or its outputs come from the cache (`teacher_cache`, trainer/teacher_cache.py).
    `teacher_sha`: the SHA-256 of the teacher's checkpoint file, what its cache is keyed by."""
    from monoocc_ros.trainer.teacher_cache import TeacherCache, WithTeacherOutputs, cache_key, data_fingerprint

    root = cfg.data_root
    seqs = resolve_sequences(root, cfg.train_sequences, "train")
    items = item_cache_folder(cfg)
    if teacher is None:
        return make_dataset(model_cfg, root, seqs, model_cfg.frame_offsets, model_cfg.privileged_lidar, items), None
    tcfg = teacher.cfg
    if cfg.teacher_cache == "off":  # the teacher's frames and LiDAR loaded with every item
        return make_dataset(model_cfg, root, seqs, tcfg.frame_offsets, tcfg.privileged_lidar, items), teacher
    student_set = make_dataset(model_cfg, root, seqs, model_cfg.frame_offsets, item_cache=items)
    with_logits = bool(model_cfg.loss.distill_logit)
    assert teacher_sha is not None  # load_teacher built the teacher from its checkpoint
    frames = list(student_set.items)
    data_print = data_fingerprint(student_set)
    auto = cfg.teacher_cache == "auto"
    key = cache_key(teacher_sha, root, data_print, frames, with_logits)
    path = cache_dir("teacher") / key if auto else Path(cfg.teacher_cache)
    if not path.exists() and info.rank == 0:
        print(f"computing the teacher's outputs once for {len(frames)} training frames -> {path}", flush=True)
        teacher_set = make_dataset(model_cfg, root, seqs, tcfg.frame_offsets, tcfg.privileged_lidar)
        TeacherCache.build(
            teacher,
            teacher_set,
            path,
            teacher_sha,
            root,
            data_print,
            with_logits,
            lambda b: model_inputs(b, tcfg, dev),
        )
        if auto:
            from monoocc_ros.cache import size_text, tree_bytes

            print(
                f"teacher cache: {size_text(tree_bytes(path))} ('monoocc cache --clear teacher' frees it)", flush=True
            )
    if info.world_size > 1:
        dist.barrier()  # the other ranks wait for rank 0's cache
    return WithTeacherOutputs(student_set, TeacherCache.open(path, teacher_sha, data_print, frames, with_logits)), None


def _preflight(
    cfg: TrainConfig, model_cfg: ModelConfig, resume: str | None, progress: bool
) -> tuple[dict | None, dict | None]:
    """What must hold before any work: a resumable checkpoint or else the fine-tune's first
    weights (both returned, read once), a model for the stage, and every file of both splits
    readable (a long run must not die late)."""
    ckpt = load_resumable(resume) if resume else None
    init = read_init_weights(cfg.init_weights, model_cfg) if cfg.init_weights and not resume else None
    if (cfg.stage == "teacher") != model_cfg.is_teacher:
        raise ValueError(
            f"stage {cfg.stage!r} needs a {'multi-frame' if cfg.stage == 'teacher' else 'monocular'} model; "
            f"{model_cfg.name} has frame_offsets {model_cfg.frame_offsets}"
        )
    for split in ("train", "val"):
        seqs = resolve_sequences(cfg.data_root, cfg.train_sequences if split == "train" else cfg.val_sequences, split)
        make_dataset(model_cfg, cfg.data_root, seqs, (0,)).check_files(progress)
    return ckpt, init


def _schedule(cfg: TrainConfig, frames_per_process: int, frames: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps)."""
    batches_per_epoch = frames_per_process // cfg.batch_size
    if batches_per_epoch < cfg.grad_accum:
        raise ValueError(
            f"{frames} training frames give {batches_per_epoch} batches per process, "
            f"fewer than grad_accum={cfg.grad_accum}"
        )
    steps_per_epoch = batches_per_epoch // cfg.grad_accum
    total_steps = min(cfg.max_steps or cfg.epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    return steps_per_epoch, total_steps


def _restore(
    ckpt: dict, resume: str, cfg: TrainConfig, teacher_sha: str | None, model, optimizer, scheduler, scaler
) -> tuple[int, int, int, dict]:
    """Load a training checkpoint (`load_resumable`'s, from file `resume`) into the run's
    objects; (step, epoch, step_in_epoch, metrics). A distilled run resumes with the very
    teacher it started with (`teacher_sha`: its checkpoint's SHA-256), or not at all."""
    diff = config_differences(ckpt["model_config"], model.cfg)
    if diff:
        raise CheckpointError(f"checkpoint {resume} was trained with a different model config; mismatched keys: {diff}")
    train_ckpt = ckpt.get("train_config", {})
    for key in ("stage", "batch_size", "grad_accum", "seed"):
        if key in train_ckpt and train_ckpt[key] != getattr(cfg, key):
            raise CheckpointError(
                f"checkpoint {resume} has {key}={train_ckpt[key]!r}, this config {getattr(cfg, key)!r}: "
                "resume would not continue the same run"
            )
    if ckpt.get("teacher_sha256", teacher_sha) != teacher_sha:
        raise CheckpointError(
            f"checkpoint {resume} was distilled from another teacher than {cfg.teacher_checkpoint or 'none'} "
            f"(SHA-256 {str(ckpt.get('teacher_sha256'))[:12]}, now {str(teacher_sha)[:12]}): resume would change "
            "what it learns from"
        )
    check_weights_match(model, ckpt["weights"], f"checkpoint {resume}")
    model.load_state_dict(ckpt["weights"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if "rng_state" in ckpt:
        torch.set_rng_state(ckpt["rng_state"])
    return ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"], ckpt.get("metrics", {})


def _teacher_out(batch: dict, teacher: MonoOcc | None, dev: torch.device, amp: bool) -> dict | None:
    """The teacher's outputs for a batch: cached (in the batch), live (frozen, on its own frames
    and LiDAR, which the Dataset loaded), or None without a teacher."""
    if teacher is not None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            out = teacher(*model_inputs(batch, teacher.cfg, dev), with_2d=False)
        return {k: v.float() for k, v in out.items() if v is not None}
    return teacher_outputs(batch, dev) if "teacher_voxel_features" in batch else None


def _log(csv_log: _CSVLog | None, writer, row: dict, step: int) -> None:
    if csv_log is None or writer is None:
        return
    csv_log.write(row)
    for k, v in row.items():
        if k not in ("step", "epoch"):
            writer.add_scalar(k, v, step)


def _validation_metrics(scores: SSCScores, step: int) -> dict:
    return {**scores.summary(), "step": step}


def _epoch_loader(train_set: Dataset, sampler: DistributedSampler, cfg: TrainConfig, epoch: int, skip: int):
    """The DataLoader of one epoch, starting after `skip` optimizer steps (a resumed epoch)."""
    sampler.set_epoch(epoch)
    indices = list(sampler)[skip * cfg.grad_accum * cfg.batch_size :]
    return DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=indices,
        num_workers=cfg.num_workers,
        drop_last=True,
        # Its own generator: creating a loader mid-epoch (on resume) must not consume the
        # global RNG that drives dropout, or the resumed run would diverge.
        generator=torch.Generator().manual_seed(cfg.seed + epoch),
    )


def _optimizer_step(scaler, optimizer, scheduler, params: list, grad_clip: float) -> torch.Tensor:
    """Unscale, clip, step, zero, schedule; returns the gradient norm before clipping."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip else torch.tensor(0.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    device: str = "auto",
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Run training; returns {"step", "losses" (per step), "metrics" (last validation), "model",
    "interrupted"}. `stop_after`: save last.pt and return after this many steps, as an interrupted
    run would. Every file of both splits is checked before step 1; Ctrl-C saves and returns."""
    with _interrupt_flag() as interrupt:
        return _train(cfg, resume, device, progress, stop_after, interrupt)


class _Run:
    """One training run's state and its named steps: build (`__init__`), `epoch_steps` (with
    `_backward` and `_optimizer_step`), `end_epoch`, `save`, `result`; `_train` strings them
    together. The order of every RNG-consuming call is part of exact resume."""

    def __init__(
        self, cfg: TrainConfig, resume: str | None, device: str, progress: bool, interrupt: threading.Event
    ) -> None:
        dev = resolve_device(device)
        self.info = info = init_distributed(dev)
        if dev.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(dev)
        self.cfg, self.dev, self.progress, self.interrupt = cfg, dev, progress, interrupt
        self.model_cfg = model_cfg = cfg.model_config()
        ckpt, init = _preflight(cfg, model_cfg, resume, progress and info.is_main)
        torch.manual_seed(cfg.seed)
        teacher = load_teacher(cfg, model_cfg, dev)
        self.teacher_sha = sha256(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
        self.train_set, self.teacher = training_set(cfg, model_cfg, teacher, self.teacher_sha, dev, info)
        self.val_seqs = resolve_sequences(cfg.data_root, cfg.val_sequences, "val")
        self.val_set = make_dataset(
            model_cfg, cfg.data_root, self.val_seqs, model_cfg.frame_offsets, model_cfg.privileged_lidar,
            item_cache_folder(cfg),
        )  # fmt: skip
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = MonoOcc(model_cfg).to(dev)
        configure_memory(self.model, cfg.checkpointing, cfg.attention_chunk)
        self.loss_fn = MonoOccLoss(model_cfg.loss).to(dev)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sampler: DistributedSampler[dict] = DistributedSampler(
            self.train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.steps_per_epoch, self.total_steps = _schedule(cfg, len(self.sampler), len(self.train_set))
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, cfg.warmup_iters, total)
        )
        self.use_amp = cfg.amp and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.metrics: dict[str, Any] = {}
        # The weights a fine-tune started from (SHA-256), kept in every checkpoint of the run.
        self.init_sha: str | None = None
        if ckpt is not None and resume:
            self.step, self.epoch, self.step_in_epoch, self.metrics = _restore(
                ckpt, resume, cfg, self.teacher_sha, self.model, self.optimizer, self.scheduler, self.scaler
            )
            self.init_sha = ckpt.get("init_sha256")
            del ckpt  # its tensors now live in the model and optimizer
        else:
            if init is not None:
                self.model.load_state_dict(init["weights"])
                self.init_sha = init["sha256"]
            del init
            torch.manual_seed(cfg.seed + info.rank)
        self.ddp_model: torch.nn.Module = self.model
        if info.world_size > 1:
            # Unused parameters happen legitimately (no proposed voxels -> no cross-attention).
            device_ids = [dev.index] if dev.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)
        self.writer, self.csv_log = None, None
        if info.is_main:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(cfg.output_dir / "tensorboard"))
            self.csv_log = _CSVLog(cfg.output_dir / "metrics.csv")
        self.losses: list[float] = []
        self.last_scores: SSCScores | None = None
        self.best = self.metrics.get("miou", -1.0)
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=cfg.name,
            unit="step",
            disable=not (progress and info.is_main),
        )

    def save(self, name: str) -> None:
        if not self.info.is_main:
            return
        save_checkpoint(
            self.cfg.output_dir / name,
            self.model_cfg,
            self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            metrics=self.metrics,
            train_config=self.cfg.to_dict(),
            teacher_sha256=self.teacher_sha,
            init_sha256=self.init_sha,
            rng_state=torch.get_rng_state(),
        )

    def _backward(self, batch: dict, sync: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one batch (gradients accumulate until `sync`); the loss terms."""
        model_cfg, dev = self.model_cfg, self.dev
        inputs = model_inputs(batch, model_cfg, dev)
        t_out = _teacher_out(batch, self.teacher, dev, self.use_amp)
        targets = {k: v.to(dev) for k, v in batch.items() if k.startswith(("target", "labels_2d", "depth_2d"))}
        no_sync = self.info.world_size > 1 and not sync
        ctx = self.ddp_model.no_sync() if no_sync else contextlib.nullcontext()  # type: ignore[operator]
        with ctx, torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            out = self.ddp_model(*inputs)
            terms = self.loss_fn(
                out, targets, target_key(model_cfg.logits_scale), target_key(model_cfg.query_scale), t_out
            )
            self.scaler.scale(terms["total"] / self.cfg.grad_accum).backward()
        return terms

    def _optimizer_step(self, accum: dict[str, float], frames: int, t_last: float) -> float:
        """Step the optimizer, count, show and log the step (its frames/s since `t_last`, the
        optimizer's own time included); returns the time the step ended."""
        grad_norm = _optimizer_step(self.scaler, self.optimizer, self.scheduler, self.params, self.cfg.grad_clip)
        now = time.perf_counter()
        fps = frames / max(now - t_last, 1e-9)
        self.step += 1
        self.step_in_epoch += 1
        self.losses.append(accum["total"])
        self.bar.set_postfix(loss=f"{accum['total']:.3f}", fps=f"{fps:.2f}")
        self.bar.update(1)
        if self.info.is_main and (self.step % self.cfg.log_every == 0 or self.step == self.total_steps):
            row = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "frames_per_s": fps,
                   **{f"loss/{k}": v for k, v in accum.items()}}  # fmt: skip
            _log(self.csv_log, self.writer, row, self.step)
        return now

    def epoch_steps(self, stopping: Callable[[], bool]) -> None:
        """Train until the epoch ends, the run ends or `stopping()` (checked after each step)."""
        cfg = self.cfg
        loader = _epoch_loader(self.train_set, self.sampler, cfg, self.epoch, self.step_in_epoch)
        self.ddp_model.train()
        t_last, frames = time.perf_counter(), 0
        accum: dict[str, float] = {}
        for i, batch in enumerate(_batches(loader, self.interrupt)):
            sync = (i + 1) % cfg.grad_accum == 0
            terms = self._backward(batch, sync)
            for k, v in terms.items():
                accum[k] = accum.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            frames += batch["image"].shape[0] * self.info.world_size
            if not sync:
                continue
            t_last = self._optimizer_step(accum, frames, t_last)
            frames, accum = 0, {}
            if stopping():
                return
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save("last.pt")
            if self.step >= self.total_steps or self.step_in_epoch >= self.steps_per_epoch:
                return

    def end_epoch(self) -> None:
        """Advance the epoch counter when the epoch is complete; validate when due."""
        cfg = self.cfg
        end_of_epoch = self.step_in_epoch >= self.steps_per_epoch
        if end_of_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        due = self.step >= self.total_steps or (end_of_epoch and cfg.eval_every and self.epoch % cfg.eval_every == 0)
        if self.info.is_main and due:
            scores = evaluate(self.model, self.val_set, self.dev, progress=self.progress, amp=self.use_amp)
            self.last_scores = scores
            self.metrics = _validation_metrics(scores, self.step)
            row = {"step": self.step, "epoch": self.epoch, "val/completion_iou": scores.completion_iou,
                   "val/miou": scores.miou}  # fmt: skip
            _log(self.csv_log, self.writer, row, self.step)
            if scores.miou > self.best:
                self.best = scores.miou
                self.save("best.pt")
        self.save("last.pt")

    def result(self, interrupted: bool) -> dict:
        return {"step": self.step, "losses": self.losses, "metrics": self.metrics, "model": self.model,
                "interrupted": interrupted}  # fmt: skip


def _train(
    cfg: TrainConfig,
    resume: str | None,
    device: str,
    progress: bool,
    stop_after: int | None,
    interrupt: threading.Event,
) -> dict:
    """`train`'s body, with the Ctrl-C flag `train` installs."""
    run = _Run(cfg, resume, device, progress, interrupt)

    def stopping() -> bool:
        return (stop_after is not None and run.step >= stop_after) or interrupt.is_set()

    while run.step < run.total_steps:
        run.epoch_steps(stopping)
        if stopping():
            run.save("last.pt")
            run.bar.close()
            if interrupt.is_set() and run.info.is_main:
                last = cfg.output_dir / "last.pt"
                print(f"interrupted: saved step {run.step} to {last}; continue with --resume {last}", file=sys.stderr)
            return run.result(interrupted=True)
        run.end_epoch()
    run.bar.close()
    if run.info.is_main:
        if run.writer is not None:
            run.writer.close()
        if run.last_scores is not None:
            print(f"validation on sequences {list(run.val_seqs)} after {run.step} steps:")
            print(run.last_scores.table())
    if run.info.world_size > 1:
        dist.barrier()
    return run.result(interrupted=False)
