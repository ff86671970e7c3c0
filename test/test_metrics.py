"""SSC metrics against hand-computed confusion matrices and the stand-in ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REALDATA
from monoocc_ros.classes import raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.metrics import SSCMetrics


def _scores(pred, gt, invalid=None):
    m = SSCMetrics()
    m.update(np.array(pred), np.array(gt), None if invalid is None else np.array(invalid))
    return m.scores()


def test_perfect_prediction():
    gt = [0, 0, 1, 1, 9, 13]
    s = _scores(gt, gt)
    assert s.completion_iou == 100 and s.precision == 100 and s.recall == 100
    assert s.class_iou[1] == s.class_iou[9] == s.class_iou[13] == 100
    assert s.miou == pytest.approx(100 * 3 / 19)  # 16 absent classes count 0


def test_shifted_prediction_hand_computed():
    gt = [0, 0, 1, 1, 1, 2]
    pred = [0, 1, 1, 1, 2, 0]
    s = _scores(pred, gt)
    # occupied: gt {2,3,4,5}, pred {1,2,3,4}: TP=3, FP=1, FN=1
    assert s.completion_iou == pytest.approx(100 * 3 / 5)
    assert s.precision == pytest.approx(75) and s.recall == pytest.approx(75)
    # class 1: TP 2, FP 1 (idx1), FN 1 (idx4) -> 2/4; class 2: TP 0, FP 1, FN 1 -> 0
    assert s.class_iou[1] == pytest.approx(50) and s.class_iou[2] == 0
    assert s.miou == pytest.approx(50 / 19)


def test_all_empty_and_ignore_invalid():
    s = _scores([0, 0, 0], [0, 0, 0])
    assert s.completion_iou == 0 and s.miou == 0 and s.num_voxels == 3
    # 255 in gt and invalid voxels are left out whatever is predicted there
    s = _scores([5, 1, 7, 0], [255, 1, 1, 0], invalid=[False, False, True, False])
    assert s.num_voxels == 2 and s.completion_iou == 100 and s.class_iou[1] == 100
    assert s.class_iou[5] == 0 and s.class_iou[7] == 0


def test_confusion_is_accumulated_over_the_split_not_averaged():
    m = SSCMetrics()
    m.update(np.array([1, 1]), np.array([1, 1]))  # frame IoU(1) = 100
    m.update(np.array([0, 0, 0, 0]), np.array([1, 1, 0, 0]))  # frame IoU(1) = 0
    assert m.scores().class_iou[1] == pytest.approx(50)  # 2 / 4, not (100 + 0) / 2
    with pytest.raises(ValueError, match="train ids"):
        m.update(np.array([255]), np.array([1]))


def test_json_and_table():
    s = _scores([0, 1], [0, 1])
    assert '"car": 100.0' in s.to_json()
    assert "completion IoU" in s.table() and "traffic-sign" in s.table()


def test_standin_perfect_prediction():
    vox = REALDATA / "standin" / "sequences" / "00" / "voxels"
    if not (vox / "000000.label").exists():
        pytest.skip(f"stand-in ground truth not found at {vox}")
    gt = raw_to_train(F.read_voxel_labels(vox / "000000.label"))
    invalid = F.read_voxel_bits(vox / "000000.invalid")
    valid = (gt != 255) & ~invalid
    present = {int(c) for c in np.unique(gt[valid]) if 0 < c < 20}
    pred = np.where(gt == 255, 0, gt).astype(np.uint8)
    m = SSCMetrics()
    m.update(pred, gt, invalid)
    s = m.scores()
    assert s.completion_iou == 100
    assert s.miou == pytest.approx(100 * len(present) / 19)
    assert len(present) >= 5
