"""Checkpoint files: one `torch.save` dict that carries everything needed to rebuild and trust a model.

Keys: format (int), model_config (dict), class_names, weights (state_dict), and optionally
optimizer, scheduler, scaler, step, epoch, metrics, train_config, code_version. Loading checks
every part and says exactly what is wrong: a missing or truncated file, a file that is not a
checkpoint, a class table that is not ours, or weights that do not fit the config (naming the
mismatched keys).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from monoocc_ros import __version__
from monoocc_ros.classes import CLASS_NAMES
from monoocc_ros.model.config import REMOVED_KEYS, ConfigError, ModelConfig

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, incomplete or does not match what is asked of it."""


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's content (what caches derived from a checkpoint are keyed by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays, tuples and paths turned into Python ints, floats,
    lists and strings (tensors kept): what `torch.load(weights_only=True)` reads without running
    any code. Metrics computed with numpy are numpy floats until they pass through here."""
    import numpy as np

    if isinstance(value, np.generic):  # before float: numpy.float64 is a float subclass
        return value.item()
    if isinstance(value, torch.Tensor | str | int | float | bool) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    # Anything else would be saved but refused by load_checkpoint, found only at --resume.
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint: tensors and plain values only")


def save_checkpoint(path: str | os.PathLike, model_config: ModelConfig, weights: dict, **extra: Any) -> None:
    """Write atomically (temporary file + rename), so an interrupted save never leaves a
    truncated checkpoint where a good one was. Everything but tensors is stored as plain Python
    values, so that loading never needs to unpickle code (`load_checkpoint`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": model_config.to_dict(),
        "class_names": list(CLASS_NAMES),
        "weights": weights,
        "code_version": code_version(),
        **{k: plain(v) for k, v in extra.items()},
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C, a full disk: no *.tmp left behind
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; returns the dict with `model_config` as a ModelConfig.

    Read with `weights_only=True`: tensors and plain Python values only. A checkpoint is data
    from anywhere (the node's `checkpoint` parameter can be set by any process on the DDS
    domain), and a pickle that names any other Python object is refused unread: nothing in it
    runs."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / truncated files
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        if isinstance(exc, pickle.UnpicklingError) and names:
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds {', '.join(names) or 'a Python object'} besides tensors "
                "and plain values, and loading it could run code; re-save it from a trusted copy with "
                "monoocc_ros.checkpoint.save_checkpoint"
            ) from None
        reason = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n|$)", str(exc))
        detail = reason.group(1) if reason else str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: {exc.__class__.__name__}: {detail}; "
            "is it truncated or not a monoocc_ros checkpoint?"
        ) from exc
    if not isinstance(data, dict) or "weights" not in data or "model_config" not in data:
        keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a monoocc_ros checkpoint (expected keys model_config, weights; got {keys})"
        )
    if data.get("format", 0) > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {data['format']}; this code reads up to {FORMAT}")
    if list(data.get("class_names", [])) != list(CLASS_NAMES):
        raise CheckpointError(
            f"checkpoint {path} was trained for classes {data.get('class_names')}, not the 20 SemanticKITTI classes"
        )
    try:
        stored = {k: v for k, v in dict(data["model_config"]).items() if k not in REMOVED_KEYS}
        data["model_config"] = ModelConfig.from_dict(stored, f"{path} model_config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    return data


def training_unfinished(data: dict[str, Any]) -> str | None:
    """Why a training checkpoint is not a finished run ("step S, epoch E of ..."), None when it
    is one. A run ends at `max_steps` or after `epochs`; an exported model (no optimizer state)
    counts as finished: whoever exported it chose it."""
    if "optimizer" not in data or "step" not in data or "epoch" not in data:
        return None
    cfg = data.get("train_config", {})
    max_steps, epochs = cfg.get("max_steps"), cfg.get("epochs", 0)
    if data["epoch"] >= epochs or (max_steps and data["step"] >= max_steps):
        return None
    return f"step {data['step']}, epoch {data['epoch']} of max_steps {max_steps}, epochs {epochs}"


def check_weights_match(model: torch.nn.Module, weights: dict, source: str) -> None:
    """Raise CheckpointError naming missing/unexpected/mis-shaped keys instead of torch's generic error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:4]}")
        if shapes:
            parts.append(
                "shape mismatch in "
                + ", ".join(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:4])
            )
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Names (dotted) of config keys whose values differ."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for key in sorted(set(da) | set(db)):
        va, vb = da.get(key), db.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += [f"{key}.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
        elif va != vb:
            out.append(key)
    return out


def build_model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint dict)."""
    from monoocc_ros.model.monoocc import MonoOcc

    data = load_checkpoint(path, map_location)
    model = MonoOcc(data["model_config"])
    check_weights_match(model, data["weights"], f"checkpoint {path}")
    model.load_state_dict(data["weights"])
    return model.eval(), data


def export_weights(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """A deployable copy of a training checkpoint: config, class table, weights, step and
    metrics, without optimizer/scheduler state (a third of the size)."""
    data = load_checkpoint(src)
    keep = {k: data[k] for k in ("step", "epoch", "metrics", "train_config") if k in data}
    save_checkpoint(dst, data["model_config"], data["weights"], source=str(src), source_code_version=data.get(
        "code_version"), **keep)  # fmt: skip
    return data
