"""ROS time stamps <-> integer nanoseconds, the one conversion every module uses.

Stamps are keys here (pairing images with camera infos, matching predictions to ground truth),
so they stay integers end to end: a float of seconds loses the last digits of a 2026 stamp.
Works on any message with `sec`/`nanosec` fields: rclpy's `builtin_interfaces/Time` and the
`rosbags` typestore's alike (no ROS import here).
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """`builtin_interfaces/Time` (or a header's `.stamp`) -> nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as `builtin_interfaces/Time` holds them."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec


def set_stamp(stamp: Any, stamp_ns: int) -> None:
    """Write nanoseconds into a `builtin_interfaces/Time` in place."""
    stamp.sec, stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
