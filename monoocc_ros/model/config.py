"""Model configuration: typed dataclasses loaded from YAML (`config/model/*.yaml`), validated once.

The grid a model fills is the config's `grid` (extent, finest voxel, shape), stored in every
checkpoint and exported file: the node publishes and `eval` scores that grid, whatever the
dataset's files hold (`monoocc_ros.geometry.SEMANTIC_KITTI_GRID`, the default). The config chooses
how finely the network divides it (`output_scale`, `query_scale`: voxel size as a multiple of the
grid's); the classes come from `monoocc_ros.classes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monoocc_ros.classes import NUM_CLASSES
from monoocc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from monoocc_ros.paths import package_file

HEADS = ("paper", "fine")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite2")


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key."""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line (its own spans several, with a caret drawing)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a file that is not YAML (or not text) is a ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (YAML) file") from None


def check_keys(cls: type, data: Any, source: str, what: str, required: tuple[str, ...] = ()) -> None:
    """One validation of a YAML mapping against a config dataclass: a mapping, no unknown keys
    (typos fail loudly instead of being ignored), no missing required keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {what}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {what} key(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing}")


@dataclass(frozen=True)
class LossConfig:
    """Weights of each loss term; 0 switches a term off (for ablations)."""

    ce: float = 2.0  # class-weighted cross-entropy on the 3D output
    sem_scal: float = 1.0
    geo_scal: float = 0.5
    semantic_2d: float = 3.0  # the paper's 2.5-4
    occupancy: float = 1.0  # fine head only: BCE + geo_scal of the 0.2 m occupancy (model/head.py)
    proposal: float = 1.0
    depth: float = 1.0
    distill_feature: float = 0.0  # masked MSE to the teacher's ICCA features (students only)
    distill_logit: float = 0.0  # temperature-scaled KL to the teacher's logits (optional)
    distill_temperature: float = 2.0


def grid_to_dict(grid: GridSpec) -> dict[str, Any]:
    """A grid as plain YAML/JSON values."""
    return {"origin": list(grid.origin), "resolution": grid.resolution, "shape": list(grid.shape)}


def grid_from_dict(data: Any, source: str) -> GridSpec:
    """A `grid:` mapping (origin [x, y, z] m, resolution m, shape [X, Y, Z]) as a GridSpec."""
    check_keys(GridSpec, data, source, "grid", required=("origin", "resolution", "shape"))
    origin, resolution, shape = data["origin"], data["resolution"], data["shape"]
    if not (isinstance(origin, list | tuple) and len(origin) == 3 and all(isinstance(v, int | float) for v in origin)):
        raise ConfigError(f"{source}: grid.origin must be three numbers (metres), got {origin!r}")
    if not (isinstance(shape, list | tuple) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        raise ConfigError(f"{source}: grid.shape must be three integers, got {shape!r}")
    if not isinstance(resolution, int | float):
        raise ConfigError(f"{source}: grid.resolution must be a number (metres), got {resolution!r}")
    try:
        return GridSpec(origin=tuple(origin), resolution=resolution, shape=tuple(shape))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# Keys a ModelConfig once had, with the only value the code ever honoured, and why. A config
# that sets one to that value reads as without it; any other value is an error, not a setting
# silently ignored. Checkpoints drop them whatever their value (`checkpoint.load_checkpoint`):
# their network was built as if the key were absent.
REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "depth_stride": (4, "depth and the 2D semantics are always predicted at 1/4 of the network input"),
}


def _drop_removed_keys(data: Any, source: str) -> Any:
    if not isinstance(data, dict) or not REMOVED_KEYS.keys() & data.keys():
        return data
    data = dict(data)
    for key, (honoured, why) in REMOVED_KEYS.items():
        if key in data and (value := data.pop(key)) != honoured:
            raise ConfigError(f"{source}: {key} {value!r} is no longer a setting ({why}); remove it")
    return data


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # local .pth file; never downloaded (EfficientNets: the wheel's)
    frozen_stages: int = 1  # stem + first stage frozen when pretrained (BatchNorm is always frozen)
    embed_dim: int = 128
    image_scale: float = 1.0  # the network sees the image resized by this factor
    output_scale: int = 1  # output voxel = output_scale * 0.2 m (1: 256x256x32)
    query_scale: int = 2  # query voxel = query_scale * 0.2 m (2: 128x128x16)
    cross_layers: int = 3
    self_layers: int = 2
    icca_layers: int = 3
    heads: int = 8
    points: int = 8
    ffn_dim: int = 256
    dropout: float = 0.1
    depth_bins: int = 64
    depth_max: float = 60.0
    # Strides of the image features the depth and the 2D semantic heads read: 16 shares the voxel
    # attention's map; 8 adds a stride-8 FPN level (model/backbone.py) for the head(s) set to 8.
    depth_features_stride: int = 16
    semantic_2d_features_stride: int = 16
    upsample_logits: bool = False  # CPU configs: LN + Linear at the query grid, upsample logits
    # "paper": one 20-class prediction per output voxel. "fine" (CPU configs): occupancy at every
    # output voxel (sub-voxels of each query) and semantics at `semantic_scale` (model/head.py).
    head: str = "paper"
    semantic_scale: int = 2  # fine head: semantic voxel = semantic_scale * 0.2 m
    # Fine head: a voxel is occupied when P(occupied) exceeds this. A decision, not a weight:
    # `monoocc calibrate` picks it on training frames (never validation) and stores it here.
    occupancy_threshold: float = 0.5
    # Fine head, optional: one threshold per predicted class (train ids 1..19, 19 values) instead
    # of `occupancy_threshold` for all: thin or hard-to-place classes (walls, trunks, cars) rarely
    # reach P(occupied) 0.5 at the right 0.2 m voxel. `monoocc calibrate --per-class` picks them on
    # training frames. Empty: `occupancy_threshold` everywhere.
    class_occupancy_thresholds: tuple[float, ...] = ()
    proposal_threshold: float = 0.5
    proposal_channels: int = 32
    frame_offsets: tuple[int, ...] = (0,)  # the teacher sees several frames; a student (0,)
    cross_view_blocks: int = 0  # teacher only: windowed cross-view transformer blocks
    cross_view_window: int = 8
    # Privileged teachers only: offsets of the LiDAR scans accumulated into the teacher's input
    # (`lidar_evidence`): its query proposals come from measured geometry instead of predicted
    # depth, and every query knows how many returns fell in its voxel.
    privileged_lidar: tuple[int, ...] = ()
    # Students: the 2D head's class probabilities lifted into the query grid by the predicted
    # depth, added to every voxel query (model/lift.py). The 2D head then runs at inference too.
    semantic_lift: bool = False
    # Fine head: the predicted depth's pseudo points counted per 0.2, 0.4 and 0.8 m voxel, added to
    # the occupancy log-odds with learned weights (model/lift.py: DepthEvidence).
    depth_evidence: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    # The grid the model's output covers at `output_scale` 1 (what it publishes). Checkpoints
    # written before this key existed were all trained on SemanticKITTI's grid, the default.
    grid: GridSpec = SEMANTIC_KITTI_GRID

    def __post_init__(self) -> None:
        """Validated once, here: each rule raises a ConfigError naming the key."""
        self._check_sizes()
        self._check_head()
        if not 0 < self.image_scale <= 2:
            raise self._bad("image_scale", "must be in (0, 2]")
        if 0 not in self.frame_offsets:
            raise self._bad("frame_offsets", "must contain 0 (the current frame)")
        if not 0 < self.proposal_threshold < 1:
            raise self._bad("proposal_threshold", "must be in (0, 1)")
        if not 0 < self.occupancy_threshold < 1:
            raise self._bad("occupancy_threshold", "must be in (0, 1)")
        if self.class_occupancy_thresholds:
            if len(self.class_occupancy_thresholds) != NUM_CLASSES - 1:
                raise self._bad("class_occupancy_thresholds", f"must be empty or {NUM_CLASSES - 1} values")
            if not all(0 < t < 1 for t in self.class_occupancy_thresholds):
                raise self._bad("class_occupancy_thresholds", "values must be in (0, 1)")
            if self.head != "fine":
                raise self._bad("class_occupancy_thresholds", "applies to the fine head only")
        for key in ("depth_features_stride", "semantic_2d_features_stride"):
            if getattr(self, key) not in (8, 16):
                raise self._bad(key, f"must be 8 or 16, got {getattr(self, key)!r}")
        if self.depth_evidence and self.head != "fine":
            raise self._bad("depth_evidence", "applies to the fine head only")

    def _bad(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"model config {self.name!r}: {key} {why}")

    def _check_sizes(self) -> None:
        if self.backbone not in BACKBONES:
            raise self._bad("backbone", f"must be one of {BACKBONES}, got {self.backbone!r}")
        if self.embed_dim % self.heads:
            raise self._bad("embed_dim", f"({self.embed_dim}) must be divisible by heads ({self.heads})")
        for key in ("embed_dim", "heads", "points", "ffn_dim", "depth_bins", "output_scale", "query_scale"):
            if getattr(self, key) <= 0:
                raise self._bad(key, "must be positive")
        for key in ("cross_layers", "self_layers", "icca_layers", "cross_view_blocks", "frozen_stages"):
            if getattr(self, key) < 0:
                raise self._bad(key, "must be >= 0")
        for key, scale in (("output_scale", self.output_scale), ("query_scale", self.query_scale)):
            if any(s % scale for s in self.grid.shape):
                raise self._bad(key, f"({scale}) must divide the grid {self.grid.shape}")

    def _check_head(self) -> None:
        if self.head not in HEADS:
            raise self._bad("head", f"must be one of {HEADS}, got {self.head!r}")
        q, s, o = self.query_scale, self.semantic_scale, self.output_scale
        if self.head == "paper":
            if q % o or q // o not in (1, 2):
                raise self._bad(
                    "query_scale", "must be output_scale or 2 x output_scale (the head upsamples by 2 at most)"
                )
            return
        if s <= 0 or q % s or s % o:
            raise self._bad("semantic_scale", "must divide query_scale and be a multiple of output_scale")
        if q // s not in (1, 2):
            raise self._bad(
                "semantic_scale", "must be query_scale or query_scale / 2 (semantics upsample by 2 at most)"
            )
        if q % o:
            raise self._bad("output_scale", "must divide query_scale (each query predicts its sub-voxels)")

    @property
    def output_grid(self) -> GridSpec:
        """The grid of the network's occupancy output (`predict_grid` repeats it onto `grid`)."""
        return self.grid.scaled(self.output_scale)

    @property
    def logits_scale(self) -> int:
        """The scale of the 20-class `logits` output: the output grid's, or the fine head's semantics."""
        return self.semantic_scale if self.head == "fine" else self.output_scale

    @property
    def query_grid(self) -> GridSpec:
        return self.grid.scaled(self.query_scale)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def is_teacher(self) -> bool:
        """Sees more than the node can give it (other frames, LiDAR): trained offline to teach."""
        return len(self.frame_offsets) > 1 or bool(self.privileged_lidar)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frame_offsets"] = list(self.frame_offsets)
        d["privileged_lidar"] = list(self.privileged_lidar)
        d["class_occupancy_thresholds"] = list(self.class_occupancy_thresholds)
        d["grid"] = grid_to_dict(self.grid)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        data = _drop_removed_keys(data, source)
        check_keys(cls, data, source, "model", required=("name",))
        data = dict(data)
        loss = data.pop("loss", {}) or {}
        check_keys(LossConfig, loss, source, "loss")
        for key in ("frame_offsets", "privileged_lidar"):
            if key in data:
                if not isinstance(data[key], list | tuple) or not all(isinstance(v, int) for v in data[key]):
                    raise ConfigError(f"{source}: {key} must be a list of integers, got {data[key]!r}")
                data[key] = tuple(data[key])
        if "class_occupancy_thresholds" in data:
            values = data["class_occupancy_thresholds"]
            if not isinstance(values, list | tuple) or not all(isinstance(v, int | float) for v in values):
                raise ConfigError(f"{source}: class_occupancy_thresholds must be a list of numbers, got {values!r}")
            data["class_occupancy_thresholds"] = tuple(float(v) for v in values)
        if "grid" in data:
            data["grid"] = grid_from_dict(data["grid"], source)
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if types[key] in ("int",) and not isinstance(value, int):
                raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
            if types[key] in ("float",) and not isinstance(value, int | float):
                raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        try:
            return cls(**data, loss=LossConfig(**loss))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config {path} does not exist")
        return cls.from_dict(read_yaml(path), str(path))


def load_named_config(name: str) -> ModelConfig:
    """A shipped config by name (`student_tiny`, `teacher_small`, ...) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return ModelConfig.from_yaml(path)
    directory = package_file("config/model")
    candidate = directory / f"{name}.yaml"
    if not candidate.is_file():
        have = sorted(p.stem for p in directory.glob("*.yaml"))
        raise FileNotFoundError(f"no model config named {name!r} in {directory}; have {have}")
    return ModelConfig.from_yaml(candidate)
