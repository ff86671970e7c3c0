"""ONNX export and the onnxruntime backend: parity with eager PyTorch on real frames, the exported
contract, the volume-sampling rewrite the export uses, and clear errors for what cannot run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import with_stride_8_level
from monoocc_ros.checkpoint import build_model_from_checkpoint, save_checkpoint
from monoocc_ros.data.formats import read_calib
from monoocc_ros.inference import Predictor, onnx_cache_path
from monoocc_ros.model.config import load_named_config
from monoocc_ros.model.deformable import weighted_samples, weighted_volume_samples_as_slice_pairs
from monoocc_ros.model.export_friendly import softmax, upsample_trilinear_as_matmuls
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.onnx_export import ExportError, export_onnx
from monoocc_ros.paths import package_file

SHIPPED = package_file("models/student_tiny.pt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The shipped student exported by the command users run."""
    if not SHIPPED.is_file():
        pytest.fail(f"{SHIPPED} is missing: it is committed with the repository")
    out = tmp_path_factory.mktemp("onnx") / "student_tiny.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "monoocc_ros.cli", "export", "--checkpoint", str(SHIPPED), "--onnx", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "input  image      (1, 3, 188, 620)" in proc.stdout
    shape = (1, *build_model_from_checkpoint(SHIPPED)[0].cfg.output_grid.shape)
    assert f"output labels     {shape} uint8" in proc.stdout
    return out


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[tuple[np.ndarray, dict]]:
    """Three frames nobody tuned the export on: the synthetic world with a seed not used in
    training, at different places along the drive (different numbers of proposed voxels)."""
    from monoocc_ros.data.synth import synthesize

    root = synthesize(tmp_path_factory.mktemp("synth"), 1, 3, seed=1234)
    seq = root / "sequences" / "00"
    calib = read_calib(seq / "calib.txt")
    return [(np.asarray(Image.open(p).convert("RGB")), calib) for p in sorted((seq / "image_2").glob("*.png"))]


def test_exported_file_declares_its_contract(exported):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 20
    ops = {n.op_type for n in proto.graph.node}
    assert {"GridSample", "NonZero", "ScatterElements"} <= ops  # attention, proposals, voxelisation
    # The 3-D attention is exported as 2-D GridSample (ONNX Runtime's 5-D kernel is slow).
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    samplers = [n for n in proto.graph.node if n.op_type == "GridSample"]
    assert len(samplers) == 3 and all(ranks[n.input[0]] == 4 for n in samplers)  # cross, self, ICCA
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*proto.graph.input, *proto.graph.output)
    }
    out = [1, *build_model_from_checkpoint(SHIPPED)[0].cfg.output_grid.shape]
    assert dims == {"image": [1, 3, 188, 620], "projection": [1, 3, 4], "labels": out, "confidence": out}
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.output}
    assert types == {"labels": onnx.TensorProto.UINT8, "confidence": onnx.TensorProto.FLOAT}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["monoocc_format"] == "2" and '"name": "student_tiny"' in meta["model_config"]


def test_onnxruntime_matches_torch_on_three_frames(exported, frames):
    """The acceptance check: >= 99.9 % of voxel labels equal, confidence within 1e-3.

    Confidence is compared value by value: the proposal stage floors pseudo-points into voxels,
    and depth that differs between the runtimes in the 5th significant digit can move a point
    across a voxel boundary, flip one voxel's proposal and change the outputs around it (seen
    with the first shipped model on one frame of three: one flipped voxel, 0.31 % of the logits
    off by more than 1e-3, labels still 99.99 % equal). Everything else must agree to 1e-3: the
    next test checks the continuous path alone with a strict maximum."""
    torch_pred = Predictor.load(SHIPPED, "torch", "cpu")
    ort_pred = Predictor.load(exported, "onnxruntime", "cpu")
    assert ort_pred.describe() == "onnxruntime (CPUExecutionProvider)"
    proposed_counts, equal, total = set(), 0, 0
    for rgb, calib in frames:
        prepared = torch_pred.prepare(rgb, calib["P2"], calib["Tr"])
        a, b = torch_pred.infer(prepared), ort_pred.infer(prepared)
        assert a[0].shape == b[0].shape == (1, *torch_pred.cfg.output_grid.shape)
        assert a[0].dtype == b[0].dtype == torch.uint8
        close = float(((a[1] - b[1]).abs() <= 1e-3).float().mean())
        assert close >= 0.99, f"only {close:.5f} of confidences within 1e-3"
        la, _ = torch_pred.postprocess(a)
        lb, _ = ort_pred.postprocess(b)
        equal += int((la == lb).sum())
        total += la.size
        assert len(np.unique(la)) >= 5, "the frame should produce a real scene, not one class"
        with torch.inference_mode():
            img = torch.from_numpy(prepared.image)[None, None]
            proj = torch.from_numpy(prepared.projection)[None, None]
            proposed_counts.add(int(torch_pred.backend.model(img, proj)["proposed"].sum()))
    assert equal / total >= 0.999, f"only {equal / total:.5f} of labels agree"
    assert len(proposed_counts) == 3, f"frames should propose different numbers of voxels: {proposed_counts}"


@pytest.mark.parametrize("proposal_bias", [100.0, -100.0], ids=["all-proposed", "none-proposed"])
def test_continuous_path_matches_within_1e3(tmp_path, frames, proposal_bias):
    """With the proposal decision fixed (every voxel, or none: the dynamic count at both ends),
    the network is continuous up to its last decision: labels agree but where two classes tie,
    or where P(occupied) sits at the fine head's threshold within float error (the label flips
    to or from empty and its confidence jumps from P(occ) * P(class | occ) to P(empty): 0.31 seen
    on one voxel of the distilled student). Where the labels agree, every confidence must agree
    within 1e-3 on every frame."""
    model, _ = build_model_from_checkpoint(SHIPPED)
    with torch.no_grad():
        model.proposal.unet.out.bias.fill_(proposal_bias)
    ckpt = tmp_path / "fixed_proposals.pt"
    save_checkpoint(ckpt, model.cfg, model.state_dict())
    export_onnx(ckpt, tmp_path / "fixed.onnx")
    torch_pred = Predictor.load(ckpt, "torch", "cpu")
    ort_pred = Predictor.load(tmp_path / "fixed.onnx", "onnxruntime", "cpu")
    for rgb, calib in frames:
        prepared = torch_pred.prepare(rgb, calib["P2"], calib["Tr"])
        a, b = torch_pred.infer(prepared), ort_pred.infer(prepared)
        same = a[0] == b[0]
        assert float(same.float().mean()) >= 0.9999
        diff = float((a[1] - b[1]).abs()[same].max())
        assert diff < 1e-3, f"confidences of equal labels differ by up to {diff}"
        flips = ~same  # each one a threshold crossing (one side empty) or a class tie (equal confidence)
        explained = (a[0][flips] == 0) | (b[0][flips] == 0) | ((a[1] - b[1]).abs()[flips] < 1e-3)
        assert bool(explained.all()), f"{int((~explained).sum())} label changes are neither"


def test_volume_sampling_as_slice_pairs_equals_grid_sample():
    """The export's rewrite of 5-D grid_sample, including points outside the volume on every
    axis and on slice edges, where neighbouring slice pairs must not leak in."""
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(3, 5, 6, 7, 4, generator=g)  # (N, C, D, H, W)
    grid = torch.rand(3, 4, 50, 3, generator=g) * 2.6 - 1.3  # (N, points, m, 3), 15 % outside on each side
    grid[0, 0, :8] = torch.tensor([[1.0, 0.2, 0.1], [-1.0, 0.0, 0.5], [0.9, 1.0, -1.0], [0.2, -0.3, 1.0],
                                   [1.2, 0.0, 0.0], [0.0, 0.0, 1.1], [-1.1, 0.5, 0.5], [0.0, 1.2, 0.0]])  # fmt: skip
    weights = torch.rand(3, 4, 50, generator=g)
    expected = weighted_samples(volume, grid[:, :, :, None, :], weights)
    reference = (
        F.grid_sample(volume, grid[:, :, :, None, :], mode="bilinear", padding_mode="zeros", align_corners=False)
        .reshape(3, 5, 4, 50)
        .mul(weights[:, None])
        .sum(2)
    )
    torch.testing.assert_close(expected, reference)
    rewritten = weighted_volume_samples_as_slice_pairs(volume, grid, weights)
    torch.testing.assert_close(rewritten, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, see onnx_export.py
def test_export_friendly_ops_equal_the_torch_ops(tmp_path):
    """What the export writes out instead of Softmax over a middle axis and 5-D Resize."""
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 5, 4, 1), (1, 20, 8, 6, 2)]:  # odd sizes, a size-1 axis
        x = torch.randn(*shape, generator=g)
        expected = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        torch.testing.assert_close(upsample_trilinear_as_matmuls(x, 2), expected, atol=1e-6, rtol=0)

    class Softmax(torch.nn.Module):
        def forward(self, x):
            return softmax(x, 1)

    x = torch.randn(2, 7, 3, 5, generator=g) * 30  # spread enough that exp would overflow without the max
    path = tmp_path / "softmax.onnx"
    torch.onnx.export(Softmax(), (x,), str(path), opset_version=20, dynamo=False, input_names=["x"])
    assert "Softmax" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), x.softmax(1), atol=1e-6, rtol=0)


def test_onnxruntime_backend_exports_a_checkpoint_once(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("MONOOCC_CACHE", str(tmp_path / "cache"))
    first = Predictor.load(SHIPPED, "onnxruntime", "cpu")
    cached = onnx_cache_path(SHIPPED)
    assert cached.is_file() and cached.parent == tmp_path / "cache" / "onnx"
    stamp = cached.stat().st_mtime_ns
    second = Predictor.load(SHIPPED, "onnxruntime", "cpu")
    assert cached.stat().st_mtime_ns == stamp  # reused, not exported again
    rgb, calib = frames[1]
    la, _ = first.predict(rgb, calib["P2"], calib["Tr"])
    lb, _ = second.predict(rgb, calib["P2"], calib["Tr"])
    np.testing.assert_array_equal(la, lb)


def test_what_cannot_be_exported_or_run_says_why(tmp_path, exported):
    teacher = MonoOcc(load_named_config("teacher_tiny"))
    save_checkpoint(tmp_path / "teacher.pt", teacher.cfg, teacher.state_dict())
    with pytest.raises(ExportError, match="multi-frame teacher"):
        export_onnx(tmp_path / "teacher.pt", tmp_path / "teacher.onnx")
    assert not (tmp_path / "teacher.onnx").exists()

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(ExportError, match="cannot load ONNX model"):
        Predictor.load(corrupt, "onnxruntime", "cpu")

    # A valid ONNX file that monoocc did not write: no metadata.
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["image"], ["logits"])],
                                                            "g", [x], [y]))  # fmt: skip
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ExportError, match="not exported by `monoocc export --onnx`"):
        Predictor.load(tmp_path / "foreign.onnx", "onnxruntime", "cpu")

    with pytest.raises(ValueError, match="use backend 'onnxruntime'"):
        Predictor.load(exported, "torch", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor.load(exported, "tensorrt", "cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Predictor.load(tmp_path / "missing.onnx", "onnxruntime", "cpu")
    with pytest.raises(ValueError, match="half_precision applies to the torch backend"):
        Predictor.load(exported, "onnxruntime", "cpu", half_precision=True)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDA provider"):
            Predictor.load(exported, "onnxruntime", "cuda")


def test_export_cli_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monoocc_ros.cli",
            "export",
            "--checkpoint",
            str(bad),
            "--onnx",
            str(tmp_path / "o.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "cannot be read" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_predict_cli_writes_the_same_labels_on_both_backends(tmp_path, exported, frames):
    rgb, _ = frames[2]
    Image.fromarray(rgb).save(tmp_path / "frame.png")
    outputs = []
    for backend, model in (("torch", SHIPPED), ("onnxruntime", exported)):
        out = tmp_path / backend
        cmd = [sys.executable, "-m", "monoocc_ros.cli", "predict", "--image", str(tmp_path / "frame.png"),
               "--model", str(model), "--backend", backend, "--device", "cpu", "--out", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert out.with_suffix(".png").is_file()
        outputs.append(np.fromfile(out.with_suffix(".label"), dtype=np.uint16))
    assert outputs[0].size == 256 * 256 * 32
    assert (outputs[0] == outputs[1]).mean() >= 0.999
    assert len(np.unique(outputs[0])) >= 5


def test_export_at_another_image_size(tmp_path, frames):
    """--image-size: the file says its input size, the backend prepares images to it, and the
    result is what the torch model gives on the same prepared input."""
    export_onnx(SHIPPED, tmp_path / "wide.onnx", (160, 704))
    ort_pred = Predictor.from_onnx(tmp_path / "wide.onnx", "cpu")
    assert ort_pred.input_size == (160, 704)
    rgb, calib = frames[0]
    prepared = ort_pred.prepare(rgb, calib["P2"], calib["Tr"])
    assert prepared.image.shape == (3, 160, 704)
    torch_pred = Predictor.load(SHIPPED, "torch", "cpu")
    with torch.inference_mode():
        expected, _ = torch_pred.backend.model.predict_grid(
            torch.from_numpy(prepared.image)[None, None], torch.from_numpy(prepared.projection)[None, None]
        )
    got, _ = ort_pred.infer(prepared)
    assert float((expected == got).float().mean()) >= 0.999
    with pytest.raises(ExportError, match="too small"):
        export_onnx(SHIPPED, tmp_path / "tiny.onnx", (16, 64))


def test_semantic_lift_exports_and_matches_torch(tmp_path, frames):
    """A model with `semantic_lift` (the 2D head runs at inference, its probabilities scattered
    into the query grid) exports, and ONNX Runtime gives torch's labels; the lift changes them."""
    import dataclasses

    shipped, _ = build_model_from_checkpoint(SHIPPED)
    torch.manual_seed(0)
    lifted = MonoOcc(dataclasses.replace(shipped.cfg, semantic_lift=True))
    missing = lifted.load_state_dict(shipped.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["lift.embed.bias", "lift.embed.weight"]
    _assert_exports_like_torch_and_differs_from_shipped(lifted, tmp_path, frames)


def _assert_exports_like_torch_and_differs_from_shipped(model: MonoOcc, tmp_path, frames) -> None:
    """`model` saved, exported and run on both backends: ONNX Runtime gives torch's labels (99.9 %),
    and they differ from the shipped model's (the option under test changes the output)."""
    ckpt = tmp_path / "variant.pt"
    save_checkpoint(ckpt, model.cfg, model.state_dict())
    export_onnx(ckpt, tmp_path / "variant.onnx")
    torch_pred = Predictor.load(ckpt, "torch", "cpu")
    ort_pred = Predictor.load(tmp_path / "variant.onnx", "onnxruntime", "cpu")
    plain = Predictor.load(SHIPPED, "torch", "cpu")
    rgb, calib = frames[0]
    prepared = torch_pred.prepare(rgb, calib["P2"], calib["Tr"])
    a, b = torch_pred.infer(prepared), ort_pred.infer(prepared)
    assert float(np.mean(np.asarray(a[0]) == np.asarray(b[0]))) >= 0.999
    assert float(np.mean(np.asarray(a[0]) != np.asarray(plain.infer(prepared)[0]))) > 0.001


def test_stride_8_features_export_and_match_torch(tmp_path, frames):
    """A model whose depth head reads the stride-8 FPN level (`depth_features_stride: 8`) exports,
    and ONNX Runtime gives torch's labels; the new level changes them (it feeds the depth)."""
    import dataclasses

    shipped, _ = build_model_from_checkpoint(SHIPPED)
    torch.manual_seed(0)
    fine = MonoOcc(dataclasses.replace(shipped.cfg, depth_features_stride=8))
    # The shipped stride-16 FPN becomes the pyramid's second level; the rest loads as it is.
    missing = fine.load_state_dict(with_stride_8_level(shipped.state_dict()), strict=False).missing_keys
    assert {k.rsplit(".", 1)[0] for k in missing} == {"backbone.fpn.inner_blocks.0.0", "backbone.fpn.layer_blocks.0.0"}
    _assert_exports_like_torch_and_differs_from_shipped(fine, tmp_path, frames)
