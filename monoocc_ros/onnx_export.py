"""ONNX export of a monocular student (`monoocc export --onnx`) and reading back what was exported.

The graph is the whole inference path: backbone, depth and query proposal, voxel transformer with
ICCA, occupancy head. Contract (written into the file's metadata and printed by the exporter):

    inputs   image       (1, 3, H, W) float32 RGB in [0, 1], H x W the network input size
             projection  (1, 3, 4)    float32, grid frame -> network pixels (`prepare_input`)
    outputs  labels      (1, X, Y, Z) uint8 train ids at the model's output grid
             confidence  (1, X, Y, Z) float32 probability of each label
             (`model.head.labels_and_confidence`: the argmax runs inside the graph, so a
             full-resolution model never hands 20 channels of logits per voxel across)

Shapes are static: `prepare_input` always produces the network input size, and fixed shapes let
ONNX Runtime fold every shape computation. The one data-dependent size inside, the number of
proposed voxels, stays dynamic (NonZero). The exported attention uses 2-D GridSample only (opset
16 and later; the 3-D self-attention is rewritten into it, see
`deformable.weighted_volume_samples_as_slice_pairs`); the export targets opset 20, the opset
tested here. Export uses torch's TorchScript-based exporter
(`dynamo=False`), which needs no extra package; torch marks it deprecated in favour of the
dynamo exporter (torch.export + onnxscript), the path to take when a torch upgrade removes it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monoocc_ros.checkpoint import CheckpointError, build_model_from_checkpoint, code_version, sha256
from monoocc_ros.classes import CLASS_NAMES
from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB
from monoocc_ros.model.config import ModelConfig
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.preprocess import network_input_size, prepare_input

OPSET = 20
FORMAT = 2  # of the metadata and outputs below (1: a `logits` output)
INPUTS = ("image", "projection")
OUTPUTS = ("labels", "confidence")


class ExportError(ValueError):
    """A checkpoint, config or ONNX file the exporter or the ONNX Runtime backend cannot handle."""


class OccupancyGraph(nn.Module):
    """What is exported: image (1, 3, H, W), projection (1, 3, 4) -> labels, confidence (1, X, Y, Z)."""

    def __init__(self, model: MonoOcc) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict_grid(image[:, None], projection[:, None])


@dataclass(frozen=True)
class ExportReport:
    path: Path
    config: ModelConfig
    image_size: tuple[int, int]
    output_shape: tuple[int, ...]
    opset: int
    seconds: float
    size_bytes: int

    def describe(self) -> str:
        h, w = self.image_size
        return "\n".join(
            [
                f"exported {self.config.name} to {self.path} ({self.size_bytes / 2**20:.1f} MiB, opset {self.opset}, "
                f"{self.seconds:.1f} s)",
                "  graph: backbone -> depth + query proposal -> voxel transformer (cross, self, ICCA) -> head",
                f"  input  image      (1, 3, {h}, {w}) float32 RGB in [0, 1]",
                "  input  projection (1, 3, 4) float32 grid frame -> network pixels",
                f"  output labels     {self.output_shape} uint8 ({len(CLASS_NAMES)} SemanticKITTI classes)",
                f"  output confidence {self.output_shape} float32",
                "  static shapes; the number of proposed voxels is dynamic inside the graph",
            ]
        )


def check_exportable(cfg: ModelConfig) -> None:
    if cfg.is_teacher:
        raise ExportError(
            f"{cfg.name} is a multi-frame teacher (frame offsets {list(cfg.frame_offsets)}); only monocular "
            "students are exported (the node runs students)"
        )


def export_onnx(
    checkpoint: str | os.PathLike, out: str | os.PathLike, image_size: tuple[int, int] | None = None
) -> ExportReport:
    """Export `checkpoint`'s student to `out` (written atomically). `image_size` (H, W) overrides
    the config's network input size (a camera with a wider field of view, for example)."""
    start = time.perf_counter()
    model, _ = build_model_from_checkpoint(checkpoint)  # raises CheckpointError with the reason
    cfg: ModelConfig = model.cfg
    check_exportable(cfg)
    h, w = image_size or network_input_size(cfg)
    if h < 32 or w < 32:
        raise ExportError(f"image size {h}x{w} is too small (at least 32x32)")
    model.eval()
    graph = OccupancyGraph(model)
    # A real camera at the export size for tracing (how many voxels the traced run proposes does
    # not matter: the count stays dynamic in the graph; tested with none and with all).
    prepared = prepare_input(
        cfg, np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), np.uint8), KITTI_CALIB["P2"], KITTI_CALIB["Tr"], (h, w)
    )
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    projection = torch.from_numpy(prepared.projection)[None]
    with torch.no_grad():
        labels, _ = graph(image, projection)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two nodes filling the cache at once do not collide
    try:
        _trace_to_file(graph, image, projection, tmp)
        _write_metadata(tmp, cfg, (h, w), checkpoint)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written stays behind
    return ExportReport(out, cfg, (h, w), tuple(labels.shape), OPSET, time.perf_counter() - start, out.stat().st_size)


def _trace_to_file(graph: nn.Module, image: torch.Tensor, projection: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python values it records as constants (shapes of this static graph).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # torch 2.9+ marks the TorchScript-based exporter deprecated in favour of the dynamo one,
        # which needs onnxscript (not a dependency here); see the module docstring.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            graph,
            (image, projection),
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def _write_metadata(path: Path, cfg: ModelConfig, image_size: tuple[int, int], checkpoint: str | os.PathLike) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "monoocc_format": str(FORMAT),
        "model_config": json.dumps(cfg.to_dict()),
        "class_names": json.dumps(list(CLASS_NAMES)),
        "image_size": json.dumps(list(image_size)),
        "source_checkpoint": str(checkpoint),
        "source_sha256": sha256(checkpoint),
        "code_version": code_version(),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "monoocc_ros"
    onnx.save(proto, str(path))


@dataclass(frozen=True)
class OnnxModelInfo:
    config: ModelConfig
    image_size: tuple[int, int]
    source_sha256: str


def read_metadata(path: str | os.PathLike, props: dict[str, str]) -> OnnxModelInfo:
    """Validate the metadata of an exported file (`props`: its key -> value map)."""
    if props.get("monoocc_format") == "1":
        raise ExportError(f"{path} was exported by an older monoocc (a logits output); export it again")
    if props.get("monoocc_format") != str(FORMAT):
        raise ExportError(
            f"{path} was not exported by `monoocc export --onnx` (metadata monoocc_format "
            f"{props.get('monoocc_format')!r}, expected {FORMAT!r})"
        )
    try:
        names = json.loads(props["class_names"])
        cfg = ModelConfig.from_dict(json.loads(props["model_config"]))
        h, w = json.loads(props["image_size"])
    except (KeyError, ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise ExportError(f"{path}: incomplete or invalid monoocc metadata: {exc!r}") from exc
    if names != list(CLASS_NAMES):
        raise ExportError(f"{path} was exported with another class table ({names[:3]}...)")
    return OnnxModelInfo(cfg, (int(h), int(w)), props.get("source_sha256", ""))


__all__ = ["CheckpointError", "ExportError", "ExportReport", "OnnxModelInfo", "export_onnx", "read_metadata"]
