"""Training configuration: a typed dataclass loaded from YAML (`config/train/*.yaml`), validated once.

Defaults are the paper's recipe: AdamW lr 2e-4, weight decay 0.01, grad-norm clip 35, cosine
schedule with 500 warm-up iterations, 20 epochs, batch 1 per process, seed 42.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monoocc_ros.model.config import ConfigError, check_keys, read_yaml

STAGES = ("teacher", "student")


@dataclass(frozen=True)
class TrainConfig:
    name: str
    model: str  # model config name (config/model/NAME.yaml) or a YAML path
    data_root: str
    stage: str = "student"  # teacher: multi-frame model; student: monocular (distilled if a teacher is given)
    teacher_checkpoint: str | None = None  # frozen teacher for distillation (student stage)
    # Fine-tuning: the run's first weights, read from a checkpoint or exported model of the same
    # architecture (e.g. models/student_tiny.pt, to adapt it to your own data) instead of a random
    # start. Only the weights: optimizer, schedule and step start afresh. A resumed run ignores it.
    init_weights: str | None = None
    # Where the teacher's outputs are computed once (trainer/teacher_cache.py): auto (the user
    # cache, keyed by teacher and items), a folder, or off (run the teacher in every step).
    teacher_cache: str = "auto"
    # Where decoded Dataset items are kept (data/item_cache.py; ~3 MB per frame): auto (the user
    # cache), a folder, or off (decode every frame in every epoch).
    item_cache: str = "auto"
    train_sequences: tuple[str, ...] | None = None  # default: SemanticKITTI's train split, those present
    val_sequences: tuple[str, ...] | None = None  # default: SemanticKITTI's val split (08), those present
    epochs: int = 20
    max_steps: int | None = None  # stop after this many optimizer steps (short runs, tests)
    batch_size: int = 1  # per process
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    warmup_iters: int = 500
    seed: int = 42
    amp: bool = True  # CUDA only; ignored on the CPU
    num_workers: int = 2
    out_dir: str | None = None  # default runs/<name>
    eval_every: int = 1  # epochs between validations (0: only at the end)
    log_every: int = 10  # optimizer steps between CSV/TensorBoard rows
    save_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    model_overrides: dict | None = None  # model config keys to change (ablations), e.g. {icca_layers: 0}
    # Memory vs speed (model/memory.py): activation checkpointing of the transformer layers, the
    # sampling and the full-resolution head: auto (on for query grids over 65,536 voxels, i.e.
    # student_small/teacher_small: a training step then fits a 12 GB card), on, or off; and how
    # many queries the deformable sampling processes at once. Same values and gradients either way.
    checkpointing: str = "auto"
    attention_chunk: int = 65536

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"train config {self.name!r}: {key} {why}")

        if self.stage not in STAGES:
            raise bad("stage", f"must be one of {STAGES}, got {self.stage!r}")
        if self.stage == "teacher" and self.teacher_checkpoint:
            raise bad("teacher_checkpoint", "is only used by the student stage")
        for key in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be >= 1 when given")
        for key in ("teacher_cache", "item_cache"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, f"must be auto, off or a folder, got {getattr(self, key)!r} (quote 'off' in YAML)")
        if self.checkpointing not in ("auto", "on", "off"):
            raise bad("checkpointing", f"must be auto, on or off, got {self.checkpointing!r}")
        if self.attention_chunk < 1:
            raise bad("attention_chunk", "must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_iters < 0:
            raise bad("lr/weight_decay/grad_clip/warmup_iters", "must be positive (lr) or >= 0")

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self):
        """The model config named by `model`, with `model_overrides` applied (and validated)."""
        from monoocc_ros.model.config import ModelConfig, load_named_config

        base = load_named_config(self.model)
        if not self.model_overrides:
            return base
        data = base.to_dict()
        for key, value in self.model_overrides.items():
            if key == "loss":
                data["loss"] = {**data["loss"], **value}
            else:
                data[key] = value
        return ModelConfig.from_dict(data, f"{self.name}: {self.model} + model_overrides")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        check_keys(cls, data, source, "training", required=("name", "model", "data_root"))
        data = dict(data)
        for key in ("train_sequences", "val_sequences"):
            if data.get(key) is not None:
                data[key] = tuple(f"{int(s):02d}" if str(s).isdigit() else str(s) for s in data[key])
        try:
            return cls(**data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config {path} does not exist")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of training keys, got {type(data).__name__}")
        data.update(overrides or {})
        return cls.from_dict(data, str(path))
