"""The node's diagnostic levels and messages (ros/diagnostics.py), case by case, in-process."""

from __future__ import annotations

import pytest

from monoocc_ros.ros.diagnostics import ERROR, OK, WARN, WINDOW_S, Inputs, NodeStats, RateWindow, assess
from monoocc_ros.ros.params import PARAMS
from monoocc_ros.ros.sync import StampPairer

PARAMS_DEFAULT = {p.name: p.default for p in PARAMS}


NO_INPUT_PROBLEMS = Inputs()


def _assess(stats=None, window=(10, 0, 0), inputs=NO_INPUT_PROBLEMS, since_ok=0.1, model_error=None, loading="",
            **params):  # fmt: skip
    return assess(stats or NodeStats(), window, inputs, {**PARAMS_DEFAULT, **params}, since_ok, model_error, loading)


def test_levels_most_serious_first():
    assert _assess() == (OK, "ok")
    assert _assess(model_error="cannot load x.pt") == (ERROR, "cannot load x.pt")
    level, msg = _assess(window=(6, 0, 4), stats=NodeStats(last_error="bad input: empty image"))
    assert level == ERROR and "4 of 10 frames failed" in msg and "empty image" in msg  # 0.4 > 0.2
    assert _assess(window=(9, 0, 1))[0] == OK  # 0.1 <= max_failure_rate 0.2
    level, msg = _assess(window=(100, 150, 0))
    assert level == WARN and "150 of 250 frames dropped" in msg  # 0.6 > max_drop_rate 0.5
    assert _assess(window=(100, 150, 0), max_drop_rate=0.6)[0] == OK
    level, msg = _assess(stats=NodeStats(processing_ms=900.0))
    assert level == WARN and "900 ms > budget 500 ms" in msg
    level, msg = _assess(loading="loading m.pt on backend torch")
    assert level == OK and "keeps serving" in msg


def test_no_frames_says_why():
    level, msg = _assess(window=(0, 0, 0), since_ok=7.0)
    assert level == ERROR and "no input: nothing arrived" in msg
    pairer = StampPairer(slop=0.0, queue_size=2)
    for i in range(4):  # images, and no camera info at all
        pairer.add_image(1_000 + i, object())
    reason = pairer.stats.last_unpaired_reason
    msg = _assess(window=(0, 0, 0), since_ok=7.0, inputs=Inputs(2, 0, reason))[1]
    assert "2 images never paired with a camera info (no camera info received)" in msg
    pairer.add_camera_info(50_000_000, object())  # 50 ms off: beyond sync_slop 0
    for i in range(4):
        pairer.add_image(2_000 + i, object())
    assert pairer.stats.last_unpaired_reason == "nearest camera info stamp 50.0 ms away (sync_slop 0 s)"
    pairer.add_image(0, object())
    msg = _assess(window=(0, 0, 0), since_ok=7.0, inputs=Inputs(4, pairer.stats.zero_stamp, ""))[1]
    assert "1 messages with a zero stamp" in msg


def test_rate_window_forgets_what_is_older_than_the_window():
    w, s = RateWindow(), NodeStats()
    assert w.add(0.0, s) == (0, 0, 0)
    s.frames, s.errors = 5, 5
    assert w.add(1.0, s) == (5, 0, 5)
    s.frames = 25
    assert w.add(WINDOW_S + 0.5, s) == (20, 0, 0)  # measured from t=1: the errors before it fell out


@pytest.mark.parametrize("key", ["max_drop_rate", "max_failure_rate"])
def test_rate_parameters_are_validated(key):
    from monoocc_ros.ros.params import validate_params

    assert validate_params({key: 1.5}) == [f"{key} must be in [0, 1], got 1.5"]


def test_node_class_in_process():
    """The node built in this process (rclpy, no executor): parameters typed, diagnostics say
    there is no input yet, a bad run-time change is refused with the reason, a good one applies."""
    import rclpy
    from rclpy.parameter import Parameter

    from monoocc_ros.ros.node import OccupancyNode

    rclpy.init()
    try:
        node = OccupancyNode()
        try:
            assert node.params.sync_slop == 0.0 and node.predictor is not None
            status = node.diagnostic_status()
            assert status.level == bytes([OK]) and status.message == "ok"
            node._started -= 60  # a minute without frames
            status = node.diagnostic_status()
            assert status.level == bytes([ERROR]) and "no input: nothing arrived" in status.message
            refused = node.set_parameters([Parameter("max_drop_rate", value=2.0)])[0]
            assert not refused.successful and "max_drop_rate must be in [0, 1]" in refused.reason
            assert node.set_parameters([Parameter("sync_slop", value=0.05)])[0].successful
            assert node.params.sync_slop == 0.05 and node.pairer.slop_ns == 50_000_000
        finally:
            node.shutdown()
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
