"""Pairs Image and CameraInfo messages by header stamp.

`message_filters` (ApproximateTimeSynchronizer) is not installable from PyPI, so this small,
tested module does the one thing the node needs: match an image with the camera info of the same
stamp (or the nearest within `slop` seconds). Zero stamps never pair (a driver that does not stamp
its messages is a configuration error, not something to guess around). Pure Python, no ROS.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class PairStats:
    paired: int = 0
    zero_stamp: int = 0
    unmatched_images: int = 0  # images evicted from the buffer without a camera info
    infos_received: int = 0
    # Why the last image went unpaired, in words (diagnostics show it): no camera info at all, or
    # how far the nearest camera info's stamp was from the image's.
    last_unpaired_reason: str = ""


class StampPairer:
    """Feed images and camera infos (with their stamps in ns); `add_*` returns an
    (image, camera_info, stamp_ns) triple when a pair completes, else None."""

    def __init__(self, slop: float = 0.0, queue_size: int = 10) -> None:
        if slop < 0:
            raise ValueError(f"sync slop must be >= 0 s, got {slop}")
        self.slop_ns = round(slop * 1e9)
        self.images: deque[tuple[int, Any]] = deque()
        self.infos: deque[tuple[int, Any]] = deque(maxlen=queue_size)
        self.queue_size = queue_size
        self.stats = PairStats()

    def set_slop(self, slop: float) -> None:
        if slop < 0:
            raise ValueError(f"sync slop must be >= 0 s, got {slop}")
        self.slop_ns = round(slop * 1e9)

    def _best(self, stamp: int, items: deque[tuple[int, Any]]) -> int | None:
        best, best_d = None, None
        for i, (s, _) in enumerate(items):
            d = abs(s - stamp)
            if d <= self.slop_ns and (best_d is None or d < best_d):
                best, best_d = i, d
        return best

    def add_image(self, stamp_ns: int, image: Any) -> tuple[Any, Any, int] | None:
        if stamp_ns == 0:
            self.stats.zero_stamp += 1
            return None
        i = self._best(stamp_ns, self.infos)
        if i is not None:
            self.stats.paired += 1
            return image, self.infos[i][1], stamp_ns
        self.images.append((stamp_ns, image))
        while len(self.images) > self.queue_size:
            s, _ = self.images.popleft()
            self._unpaired(s)
        return None

    def _unpaired(self, stamp_ns: int) -> None:
        self.stats.unmatched_images += 1
        if not self.stats.infos_received:
            self.stats.last_unpaired_reason = "no camera info received"
            return
        nearest = min((abs(s - stamp_ns) for s, _ in self.infos), default=None)
        slop = f"sync_slop {self.slop_ns / 1e9:g} s"
        self.stats.last_unpaired_reason = (
            f"nearest camera info stamp {nearest / 1e6:.1f} ms away ({slop})" if nearest is not None else
            f"no camera info within {slop}"
        )  # fmt: skip

    def add_camera_info(self, stamp_ns: int, info: Any) -> tuple[Any, Any, int] | None:
        if stamp_ns == 0:
            self.stats.zero_stamp += 1
            return None
        self.stats.infos_received += 1
        self.infos.append((stamp_ns, info))
        i = self._best(stamp_ns, self.images)
        if i is None:
            return None
        img_stamp, image = self.images[i]
        # Older images can no longer pair with anything newer than this info: drop them.
        for _ in range(i + 1):
            s, _ = self.images.popleft()
            if s != img_stamp:
                self._unpaired(s)
        self.stats.paired += 1
        return image, info, img_stamp
