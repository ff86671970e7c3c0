"""Every command meets bad input with one clear line, a non-zero exit and no traceback.

Table-driven: each case is a command line over files a user could plausibly hand over by
mistake (a missing path, a text file where a checkpoint belongs, a truncated model, a YAML file
that is not YAML, a dataset with too few poses, a bag folder that is not a bag, ...). Each must
exit non-zero, print no Python traceback, name what was wrong in one line on stderr and leave no
output behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from monoocc_ros.checkpoint import export_weights
from monoocc_ros.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "student_tiny.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    synthesize(d / "data", sequences=1, frames=3, seed=11)
    seq = d / "data" / "sequences" / "00"
    f = {"dir": d, "data": d / "data", "seq": seq}
    f["text"] = d / "notes.txt"
    f["text"].write_text("these are not weights\n")
    f["empty"] = d / "empty.pt"
    f["empty"].write_bytes(b"")
    f["truncated"] = d / "truncated.pt"
    f["truncated"].write_bytes(SHIPPED.read_bytes()[:4096])
    f["not_yaml"] = d / "params.yaml"
    f["not_yaml"].write_text("ros__parameters: [unclosed\n  - {\n")
    f["unknown_key"] = d / "typo.yaml"
    f["unknown_key"].write_text("name: t\nmodel: student_tiny\ndata_root: x\nlearning_rate: 1\n")
    f["no_data"] = d / "no_data.yaml"
    f["no_data"].write_text(f"name: t\nmodel: student_tiny\ndata_root: {d / 'nowhere'}\nout_dir: {d / 'run'}\n")
    f["exported"] = d / "exported.pt"
    export_weights(SHIPPED, f["exported"])
    f["image_text"] = d / "image.png"
    f["image_text"].write_text("not a png")
    f["calib_bad"] = d / "calib_bad.txt"
    f["calib_bad"].write_text("P2: 1 2 3\n")
    f["not_bag"] = d / "not_a_bag"
    f["not_bag"].mkdir()
    (f["not_bag"] / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 5}\n")
    # A sequence whose poses.txt is shorter than its images (a truncated download).
    short = d / "short" / "sequences" / "00"
    shutil.copytree(seq, short)
    lines = (short / "poses.txt").read_text().splitlines()
    (short / "poses.txt").write_text("\n".join(lines[:1]) + "\n")
    f["short"] = d / "short"
    # A sequence whose calib.txt has no Tr (image-only calibration).
    no_tr = d / "no_tr" / "sequences" / "00"
    shutil.copytree(seq, no_tr)
    calib = [ln for ln in (no_tr / "calib.txt").read_text().splitlines() if not ln.startswith("Tr")]
    (no_tr / "calib.txt").write_text("\n".join(calib) + "\n")
    f["no_tr"] = d / "no_tr"
    # A sequence whose third image is not a PNG (a failed copy): commands fail in the middle.
    corrupt = d / "corrupt" / "sequences" / "00"
    shutil.copytree(seq, corrupt)
    (corrupt / "image_2" / "000002.png").write_text("not a png")
    f["corrupt"] = d / "corrupt"
    return f


def _cases(f: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    d = f["dir"]
    img = str(f["seq"] / "image_2" / "000000.png")
    calib = str(f["seq"] / "calib.txt")
    data = str(f["data"])
    return [
        # (case, argv after `monoocc`, a substring the one line must contain)
        ("train: config missing", ["train", "--config", str(d / "missing.yaml")], "does not exist"),
        ("train: config not YAML", ["train", "--config", str(f["not_yaml"])], "params.yaml"),
        ("train: unknown key", ["train", "--config", str(f["unknown_key"])], "learning_rate"),
        ("train: data root missing", ["train", "--config", str(f["no_data"])], "nowhere"),
        ("train: resume from an exported model", ["train", "--config", str(f["no_data"]), "--set",
         f"data_root={data}", "--resume", str(f["exported"])], "exported"),
        ("train: resume from a text file", ["train", "--config", str(f["no_data"]), "--set", f"data_root={data}",
         "--resume", str(f["text"])], "notes.txt"),
        ("train: bad --set", ["train", "--config", str(f["no_data"]), "--set", "epochs"], "KEY=VALUE"),
        ("eval: checkpoint missing", ["eval", "--checkpoint", str(d / "none.pt"), "--data", data], "none.pt"),
        ("eval: checkpoint is text", ["eval", "--checkpoint", str(f["text"]), "--data", data], "notes.txt"),
        ("eval: checkpoint truncated", ["eval", "--checkpoint", str(f["truncated"]), "--data", data],
         "truncated.pt"),
        ("eval: checkpoint empty", ["eval", "--checkpoint", str(f["empty"]), "--data", data], "empty.pt"),
        ("eval: data root missing", ["eval", "--checkpoint", str(SHIPPED), "--data", str(d / "nowhere")], "nowhere"),
        ("eval: sequence missing", ["eval", "--checkpoint", str(SHIPPED), "--data", data, "--sequences", "07"], "07"),
        ("eval: poses shorter than images", ["eval", "--checkpoint", str(SHIPPED), "--data", str(f["short"]),
         "--sequences", "00"], "poses.txt"),
        ("eval: fails mid-run, no partial predictions", ["eval", "--checkpoint", str(SHIPPED), "--data",
         str(f["corrupt"]), "--sequences", "00", "--predictions", str(d / "preds")], "000002.png"),
        ("export: checkpoint is text", ["export", "--checkpoint", str(f["text"]), "--onnx", str(d / "x.onnx")],
         "notes.txt"),
        ("export: nothing asked", ["export", "--checkpoint", str(SHIPPED)], "--out"),
        ("predict: model is text", ["predict", "--model", str(f["text"]), "--image", img, "--calib", calib, "--out",
         str(d / "p1")], "notes.txt"),
        ("predict: image missing", ["predict", "--image", str(d / "none.png"), "--calib", calib, "--out",
         str(d / "p2")], "none.png"),
        ("predict: image not an image", ["predict", "--image", str(f["image_text"]), "--calib", calib, "--out",
         str(d / "p3")], "image.png"),
        ("predict: calib unreadable", ["predict", "--image", img, "--calib", str(f["calib_bad"]), "--out",
         str(d / "p4")], "calib_bad.txt"),
        ("predict: onnx missing", ["predict", "--model", str(d / "m.onnx"), "--backend", "onnxruntime", "--image",
         img, "--calib", calib, "--out", str(d / "p5")], "m.onnx"),
        ("stats: data root missing", ["stats", "--data", str(d / "nowhere")], "nowhere"),
        ("synth: out is a file", ["synth", "--out", str(f["text"]), "--frames", "1"], "notes.txt"),
        ("synth: no frames", ["synth", "--out", str(d / "s"), "--frames", "0"], "frames"),
        ("bag from-dataset: data missing", ["bag", "from-dataset", "--data", str(d / "nowhere"), "--sequence", "00",
         "--out", str(d / "b1")], "nowhere"),
        ("bag from-dataset: sequence missing", ["bag", "from-dataset", "--data", data, "--sequence", "05", "--out",
         str(d / "b2")], "05"),
        ("bag from-dataset: out exists", ["bag", "from-dataset", "--data", data, "--sequence", "00", "--out",
         str(f["not_bag"])], "not_a_bag"),
        ("bag from-dataset: fails mid-write, no partial bag", ["bag", "from-dataset", "--data", str(f["corrupt"]),
         "--sequence", "00", "--out", str(d / "b3")], "000002.png"),
        ("bag eval: pred missing", ["bag", "eval", "--pred", str(d / "none_bag"), "--gt", str(f["not_bag"])],
         "none_bag"),
        ("bag eval: not a bag", ["bag", "eval", "--pred", str(f["not_bag"]), "--gt", str(f["not_bag"])],
         "not_a_bag"),
        ("bag play: bag missing", ["bag", "play", str(d / "none_bag")], "none_bag"),
        ("bag play: not a bag", ["bag", "play", str(f["not_bag"])], "not_a_bag"),
        ("replay-eval: bag missing", ["replay-eval", "--bag", str(d / "none_bag")], "none_bag"),
        ("replay-eval: checkpoint is text", ["replay-eval", "--bag", str(f["not_bag"]), "--checkpoint",
         str(f["text"])], "notes.txt"),
        ("bench train: data missing", ["bench", "train", "--data", str(d / "nowhere")], "nowhere"),
        ("ablation: data missing", ["ablation", "--data", str(d / "nowhere"), "--seeds", "1"], "nowhere"),
    ]  # fmt: skip


CASE_IDS = [c[0] for c in _cases(defaultdict(lambda: Path("/x")))]  # the table's names, for pytest ids


def _one_line(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with carriage returns) and blank lines."""
    lines = [ln.split("\r")[-1].strip() for ln in stderr.splitlines()]
    return [ln for ln in lines if ln and not re.search(r"\d+%\|", ln)]


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_bad_input_gives_one_line_and_nonzero_exit(files, index, tmp_path):
    case, argv, expected = _cases(files)[index]
    env = {**os.environ, "MONOOCC_CACHE": str(tmp_path / "cache")}
    before = set(files["dir"].rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "monoocc_ros.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    lines = _one_line(proc.stderr)
    assert proc.returncode not in (0, None), f"{case}: exit 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{case}: traceback\n{proc.stderr}"
    assert len(lines) == 1, f"{case}: expected one line on stderr, got {lines}"
    assert expected in lines[0], f"{case}: {lines[0]!r} does not name {expected!r}"
    created = set(files["dir"].rglob("*")) - before
    assert not created, f"{case}: left {sorted(map(str, created))}"


def test_calib_readers_accept_p2_tr_and_the_kitti_object_format(tmp_path):
    """calib.txt with only P2 and Tr (what `predict --help` promises), and the KITTI object
    benchmark's format (P2, R0_rect, Tr_velo_to_cam: 3x4, applied as R0 @ Tr)."""
    from monoocc_ros.data.formats import read_calib
    from monoocc_ros.geometry import KITTI_CALIB

    p2, tr = KITTI_CALIB["P2"], KITTI_CALIB["Tr"][:3]
    fmt = lambda m: " ".join(f"{v:.12e}" for v in np.asarray(m).reshape(-1))  # noqa: E731
    (tmp_path / "odometry.txt").write_text(f"P2: {fmt(p2)}\nTr: {fmt(tr)}\n")
    calib = read_calib(tmp_path / "odometry.txt")
    np.testing.assert_allclose(calib["P2"], p2)
    np.testing.assert_allclose(calib["Tr"][:3], tr)
    r0 = np.array([[0.9999, 0.0098, -0.0074], [-0.0099, 0.9999, -0.0043], [0.0074, 0.0044, 1.0]])
    r0, _ = np.linalg.qr(r0)  # a proper rotation, as R0_rect is
    r0 *= np.sign(np.diag(r0))[:, None]
    (tmp_path / "object.txt").write_text(
        f"P0: {fmt(p2)}\nP1: {fmt(p2)}\nP2: {fmt(p2)}\nP3: {fmt(p2)}\nR0_rect: {fmt(r0)}\n"
        f"Tr_velo_to_cam: {fmt(tr)}\nTr_imu_to_velo: {fmt(tr)}\n"
    )
    calib = read_calib(tmp_path / "object.txt")
    np.testing.assert_allclose(calib["Tr"][:3], r0 @ tr, atol=1e-9)
    np.testing.assert_allclose(calib["Tr"][3], [0, 0, 0, 1])
