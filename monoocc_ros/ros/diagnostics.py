"""What the node's /diagnostics status says, as a pure function of its counters (no ROS).

Why apart from the node: the level rules are where a user learns that something is wrong, so
they are tested in-process, case by case, instead of through a running node. The rules, most
serious first:
- ERROR: no model (the reason), or more than `max_failure_rate` of the frames of the last
  `WINDOW_S` seconds failed, or no frame was processed for `input_timeout_s` (with why: images
  that do not pair and the reason, zero stamps, the last error, or no input at all);
- WARN: more than `max_drop_rate` of the paired frames of the window were dropped (the network
  is slower than the camera), or processing takes longer than `processing_budget_ms`;
- OK otherwise (saying so when a new model is loading while the current one serves).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
WINDOW_S = 10.0  # the rates are over the last this many seconds


@dataclass
class NodeStats:
    """The node's counters since start-up (the worker and the callbacks update them)."""

    frames: int = 0  # processed and published
    dropped: int = 0  # replaced by a newer pair while the worker was busy
    errors: int = 0  # frames that failed (bad input, inference)
    last_error: str = ""
    last_ok: float = 0.0  # monotonic time of the last published frame
    processing_ms: float = 0.0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Inputs:
    """The pairer's counters (ros/sync.py PairStats) as the assessment needs them."""

    unpaired_images: int = 0
    zero_stamps: int = 0
    unpaired_reason: str = ""


@dataclass
class RateWindow:
    """(time, frames, dropped, errors) snapshots over the last WINDOW_S seconds."""

    samples: deque = field(default_factory=deque)

    def add(self, now: float, stats: NodeStats) -> tuple[int, int, int]:
        """Record a snapshot; returns (frames, dropped, errors) within the window."""
        self.samples.append((now, stats.frames, stats.dropped, stats.errors))
        while len(self.samples) > 1 and now - self.samples[0][0] > WINDOW_S:
            self.samples.popleft()
        _, f0, d0, e0 = self.samples[0]
        return stats.frames - f0, stats.dropped - d0, stats.errors - e0


def assess(
    stats: NodeStats,
    window: tuple[int, int, int],
    inputs: Inputs,
    params: dict,
    since_ok_s: float,
    model_error: str | None,
    loading: str = "",
) -> tuple[int, str]:
    """(level, message) of the node's status. `window`: frames, dropped, errors in the last
    WINDOW_S seconds; `model_error`: None when a model serves, else why not."""
    frames, dropped, errors = window
    if model_error is not None:
        return ERROR, model_error + (f"; {loading}" if loading else "")
    attempted = frames + errors
    if attempted and errors / attempted > params["max_failure_rate"]:
        return ERROR, (
            f"{errors} of {attempted} frames failed in the last {WINDOW_S:.0f} s "
            f"(> max_failure_rate {params['max_failure_rate']:g}); last error: {stats.last_error}"
        )
    if since_ok_s > params["input_timeout_s"]:
        return ERROR, f"no frame processed for {since_ok_s:.1f} s; {_why_no_frames(stats, inputs)}"
    paired = frames + dropped + errors
    if paired and dropped / paired > params["max_drop_rate"]:
        return WARN, (
            f"{dropped} of {paired} frames dropped in the last {WINDOW_S:.0f} s (> max_drop_rate "
            f"{params['max_drop_rate']:g}): the network is slower than the camera"
        )
    if stats.processing_ms > params["processing_budget_ms"]:
        return WARN, f"processing {stats.processing_ms:.0f} ms > budget {params['processing_budget_ms']:.0f} ms"
    if loading:
        return OK, f"{loading} (the current model keeps serving)"
    return OK, "ok"


def _why_no_frames(stats: NodeStats, inputs: Inputs) -> str:
    reasons = []
    if inputs.unpaired_images:
        reasons.append(f"{inputs.unpaired_images} images never paired with a camera info ({inputs.unpaired_reason})")
    if inputs.zero_stamps:
        reasons.append(f"{inputs.zero_stamps} messages with a zero stamp (never paired)")
    if stats.last_error:
        reasons.append(f"last error: {stats.last_error}")
    return "; ".join(reasons) or "no input: nothing arrived on ~/input/image and ~/input/camera_info"
