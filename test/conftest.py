"""Test-wide setup: keep DDS on this machine and give this test run its own domain."""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = REPO_ROOT.parent / "shared" / "realdata"

# Set before any test imports rclpy; child processes inherit them. Shared memory only (no
# network transport at all) with segments large enough for camera images: see the XML file.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_shm.xml"))
if "MONOOCC_TEST_DOMAIN_ID" in os.environ:
    os.environ["ROS_DOMAIN_ID"] = os.environ["MONOOCC_TEST_DOMAIN_ID"]
else:
    # 1..100 are valid on Linux; a random pick keeps parallel runs (CI, a developer) apart.
    os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))


# Derived files (ONNX exports, priors, decoded items, teacher outputs) go to this run's own cache:
# a test neither reads a stale entry from the user's ~/.cache/monoocc_ros nor leaves files there.
if "MONOOCC_CACHE" not in os.environ:
    os.environ["MONOOCC_CACHE"] = tempfile.mkdtemp(prefix="monoocc_test_cache_")
    atexit.register(shutil.rmtree, os.environ["MONOOCC_CACHE"], True)


@pytest.fixture(scope="session")
def realdata_seq00() -> Path:
    """Real SemanticKITTI sequence 00 sample files (../shared/realdata); skipped when absent."""
    seq = REALDATA / "semantickitti-mini" / "sequences" / "00"
    if not seq.is_dir():
        pytest.skip(f"real SemanticKITTI sample not found at {seq} (only present beside the repo)")
    return seq


def with_stride_8_level(state: dict) -> dict:
    """A state dict of a model or backbone without the stride-8 FPN level, its keys renamed for
    one with it: the stride-16 level is the FPN's second (index 1) once a stride-8 level is
    below it. The new level itself stays as initialised (load with strict=False)."""
    return {re.sub(r"fpn\.(inner|layer)_blocks\.0", r"fpn.\1_blocks.1", k): v for k, v in state.items()}
