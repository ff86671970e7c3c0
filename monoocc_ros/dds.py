"""DDS settings for the processes this package starts itself on one machine (benchmarks, bag
tools, demo; the tests and the Makefile export the same): discovery on localhost only, so no
packet leaves the machine, and Fast DDS on shared memory with segments large enough for camera
images (config/fastdds_shm.xml says why). On a robot users choose their own discovery range.
"""

from __future__ import annotations

import os

from monoocc_ros.paths import package_file


def use_local_dds() -> None:
    """Set the two variables unless the user already exported them (their settings win). Must run
    before rclpy.init and before child processes start."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = package_file("config/fastdds_shm.xml")
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
