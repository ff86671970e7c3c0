"""The inference API shared by the ROS node, offline evaluation and the benchmarks:

    predictor = Predictor.from_checkpoint("models/student_tiny.pt", device="auto")
    labels, confidence = predictor.predict(image, intrinsics, extrinsic)

`image` is any (H, W, 3) uint8 RGB image; `intrinsics` its 3x3 K or 3x4 P (a CameraInfo's P
carries a stereo baseline in P[:, 3]); `extrinsic` the 4x4 transform from the grid frame to that
camera's frame. The image is rescaled so that its focal length matches the one the model was
trained with (KITTI's 718.856 px times the config's `image_scale`), then padded or cropped so the
principal point sits where it did in training; the projection is adjusted with every step. So a
camera unlike KITTI's still gets geometrically right voxels (within the training field of view).

Output: `labels` uint8 train ids on the model's grid (`Predictor.grid`, from its config;
SemanticKITTI's 256x256x32 for the shipped models; a coarser output is repeated to the full
grid), `confidence` float32, the probability of the predicted label.

Devices: "auto" takes CUDA when available, else the CPU; "cuda" without CUDA is an error, never a
silent fallback. `half_precision` runs the network under CUDA autocast (fp16); it is an error on
the CPU.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import onnxruntime

    from monoocc_ros.model.monoocc import MonoOcc

from monoocc_ros.geometry import (
    SEMANTIC_KITTI_GRID,
    GridSpec,
    in_image,
    project_points,
    to_homogeneous,
)
from monoocc_ros.model.config import ModelConfig
from monoocc_ros.paths import cache_dir
from monoocc_ros.preprocess import (  # noqa: F401 (the inference API's names: re-exported for its users)
    Prepared,
    network_input_size,
    prepare_input,
    validate_camera,
)

Grid = tuple[torch.Tensor, torch.Tensor]  # labels (1, X, Y, Z) uint8, confidence (1, X, Y, Z) float32


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available (use 'cpu' or 'auto')")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def camera_view_mask(
    intrinsics: np.ndarray, extrinsic: np.ndarray, image_hw: tuple[int, int], grid: GridSpec = SEMANTIC_KITTI_GRID
) -> np.ndarray:
    """`grid.shape` bool (SemanticKITTI's: 256x256x32): voxels whose centre projects onto a pixel of
    an image of `image_hw` (H, W) in front of the camera. Cached per camera (it rarely changes)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    k = np.concatenate([k, np.zeros((3, 1))], 1) if k.shape == (3, 3) else k
    projection = k @ to_homogeneous(extrinsic)
    return _view_mask(projection.tobytes(), int(image_hw[0]), int(image_hw[1]), grid)


@functools.lru_cache(maxsize=4)
def _view_mask(projection: bytes, height: int, width: int, grid: GridSpec) -> np.ndarray:
    p = np.frombuffer(projection, dtype=np.float64).reshape(3, 4)
    uv, depth = project_points(grid.voxel_centers().reshape(-1, 3), p)
    mask = ((depth > 0) & in_image(uv, width, height)).reshape(grid.shape)
    mask.flags.writeable = False  # shared by every caller through the cache
    return mask


def expand_to_full_grid(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(X, Y, Z) at a coarser grid -> the model's grid (`ModelConfig.grid`) by repeating each voxel."""
    from monoocc_ros.model.head import repeat_voxels

    return repeat_voxels(x[None], factor)[0]


class TorchBackend:
    """Eager PyTorch on the CPU or CUDA (optionally fp16 autocast on CUDA)."""

    name = "torch"

    def __init__(self, model: MonoOcc, device: str = "auto", half_precision: bool = False) -> None:
        if model.cfg.is_teacher:
            raise ValueError(
                f"{model.cfg.name} is a multi-frame teacher ({model.cfg.frame_offsets}); "
                "the node runs monocular students"
            )
        self.device = resolve_device(device)
        if half_precision and self.device.type != "cuda":
            raise ValueError("half_precision needs CUDA; the CPU runs float32")
        self.cfg: ModelConfig = model.cfg
        self.half = half_precision
        self.input_size = network_input_size(self.cfg)
        self.model = model.to(self.device).eval()

    def describe(self) -> str:
        return f"torch on {self.device}{' (fp16)' if self.half else ''}"

    @torch.inference_mode()
    def grid(self, prepared: Prepared) -> Grid:
        img = torch.from_numpy(prepared.image)[None, None].to(self.device)
        proj = torch.from_numpy(prepared.projection)[None, None].to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            labels, confidence = self.model.predict_grid(img, proj)
        return labels, confidence.float()


def onnxruntime_providers(device: str) -> list[str | tuple[str, dict]]:
    """Execution providers for a device choice: the CPU only for "cpu"; TensorRT and CUDA first
    when installed for "auto"; "cuda[:N]" without the CUDA provider is an error, not a fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        gpu_id = 0
    elif device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device {device!r} requested but onnxruntime has no CUDA provider (installed: {available}); "
                "install onnxruntime-gpu or use 'cpu'/'auto'"
            )
        gpu_id = int(device[5:]) if ":" in device else 0
    else:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    gpu = [(p, {"device_id": gpu_id}) for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    return [*gpu, "CPUExecutionProvider"]


# ONNX Runtime's fused SkipLayerNormalization took twice as long as the Add + LayerNormalization
# it replaces on our (32768, 48) tokens (21.6 vs 10.4 ms per frame for the four norms, 2 cores).
ORT_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def onnxruntime_session(
    path: str | os.PathLike, providers: list, threads: int = 0, profile_prefix: str | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session with this package's settings: the backend and the benchmark's
    profiler build theirs here, so that what is profiled is what runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # No busy-waiting between runs: on a robot the CPU is shared with other nodes. Measured
    # here: no change in ONNX Runtime's own latency (331 vs 327 ms median).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's problem
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(
        os.fspath(path), options, providers=providers, disabled_optimizers=ORT_DISABLED_OPTIMIZERS
    )


class OnnxRuntimeBackend:
    """A file written by `monoocc export --onnx`, run by ONNX Runtime. Its config and input size
    come from the file's metadata, so pre- and post-processing are the torch backend's."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int = 0) -> None:
        from monoocc_ros.onnx_export import INPUTS, OUTPUTS, ExportError, check_exportable, read_metadata

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        providers = onnxruntime_providers(device)
        try:
            self.session = onnxruntime_session(path, providers, threads)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise ExportError(f"cannot load ONNX model {path}: {exc}") from exc
        info = read_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        check_exportable(info.config)
        names = (tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs()))
        if names != (INPUTS, OUTPUTS):
            raise ExportError(f"{path} has inputs/outputs {names}, expected {(INPUTS, OUTPUTS)}")
        self.cfg, self.input_size, self.path, self.outputs = info.config, info.image_size, path, OUTPUTS
        self.providers = self.session.get_providers()
        self.device = "cuda" if any(p != "CPUExecutionProvider" for p in self.providers) else "cpu"

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"

    def grid(self, prepared: Prepared) -> Grid:
        labels, confidence = self.session.run(
            list(self.outputs), {"image": prepared.image[None], "projection": prepared.projection[None]}
        )
        return torch.from_numpy(labels), torch.from_numpy(confidence)


BACKENDS = ("torch", "onnxruntime")


def onnx_cache_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's automatic ONNX export is kept: keyed by the checkpoint's content, so a
    retrained file at the same path is exported again, and by the export format, so a newer
    monoocc never meets an older export."""
    from monoocc_ros.checkpoint import sha256
    from monoocc_ros.onnx_export import FORMAT

    return cache_dir("onnx") / f"{Path(checkpoint).stem}-{sha256(checkpoint)[:16]}-f{FORMAT}.onnx"


class Predictor:
    """Pre-processing, one backend, post-processing. Build with `from_model`, `from_checkpoint`,
    `from_onnx` or `load` (path + backend name)."""

    def __init__(self, backend: TorchBackend | OnnxRuntimeBackend) -> None:
        self.backend = backend
        self.cfg: ModelConfig = backend.cfg
        # What the predictor publishes: the model's grid, from its config (checkpoint or ONNX
        # metadata), not the dataset's file grid.
        self.grid: GridSpec = self.cfg.grid
        self.input_size = backend.input_size
        self.device = backend.device

    @classmethod
    def from_model(cls, model: MonoOcc, device: str = "auto", half_precision: bool = False) -> Predictor:
        return cls(TorchBackend(model, device, half_precision))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", half_precision: bool = False) -> Predictor:
        from monoocc_ros.checkpoint import build_model_from_checkpoint

        model, _ = build_model_from_checkpoint(path)
        return cls.from_model(model, device, half_precision)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, device: str = "auto") -> Predictor:
        return cls(OnnxRuntimeBackend(path, device))

    @classmethod
    def load(
        cls, path: str | os.PathLike, backend: str = "torch", device: str = "auto", half_precision: bool = False
    ) -> Predictor:
        """`path`: a checkpoint (.pt) or an ONNX export (.onnx). The onnxruntime backend given a
        checkpoint exports it once to `onnx_cache_path` and reuses that file afterwards."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        is_onnx = str(path).endswith(".onnx")
        if backend == "torch":
            if is_onnx:
                raise ValueError(f"{path} is an ONNX model: use backend 'onnxruntime' (torch runs .pt checkpoints)")
            return cls.from_checkpoint(path, device, half_precision)
        if half_precision:
            raise ValueError("half_precision applies to the torch backend; the ONNX model runs float32")
        if not is_onnx:
            from monoocc_ros.onnx_export import export_onnx

            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint {path} does not exist")
            cached = onnx_cache_path(path)
            if not cached.is_file():
                export_onnx(path, cached)  # a file that is not a checkpoint fails here, with the reason
            path = cached
        return cls.from_onnx(path, device)

    def describe(self) -> str:
        return self.backend.describe()

    def infer(self, prepared: Prepared) -> Grid:
        """The network on one prepared image: labels (1, X, Y, Z) uint8 and confidence (1, X, Y, Z)
        float32 at the model's output grid (`model.head.labels_and_confidence`)."""
        return self.backend.grid(prepared)

    def prepare(self, image: np.ndarray, intrinsics: np.ndarray, extrinsic: np.ndarray) -> Prepared:
        return prepare_input(self.cfg, image, intrinsics, extrinsic, self.input_size)

    def predict(
        self, image: np.ndarray, intrinsics: np.ndarray, extrinsic: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.postprocess(self.infer(self.prepare(image, intrinsics, extrinsic)))

    def postprocess(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """The output grid's (labels, confidence) -> numpy on the model's grid (`self.grid`)."""
        labels, confidence = grid[0][0], grid[1][0]
        factor = self.grid.shape[0] // labels.shape[0]
        labels = expand_to_full_grid(labels.to(torch.uint8), factor)
        confidence = expand_to_full_grid(confidence, factor)
        return labels.cpu().numpy(), confidence.cpu().numpy().astype(np.float32, copy=False)
