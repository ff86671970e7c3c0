"""The trainer: exact resume, two-process DDP (gloo), config mismatch errors, evaluation output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from monoocc_ros.checkpoint import CheckpointError, load_checkpoint, sha256
from monoocc_ros.classes import raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.data.synth import synthesize
from monoocc_ros.trainer.config import TrainConfig
from monoocc_ros.trainer.engine import lr_lambda, train
from monoocc_ros.trainer.evaluate import evaluate_checkpoint

# A micro model so that each training step takes a fraction of a second on 2 cores.
MICRO = {
    "name": "micro", "backbone": "resnet18", "embed_dim": 16, "image_scale": 0.25, "output_scale": 4,
    "query_scale": 8, "cross_layers": 1, "self_layers": 1, "icca_layers": 1, "heads": 2, "points": 2,
    "ffn_dim": 32, "depth_bins": 16, "proposal_channels": 8, "dropout": 0.1,
}  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer_data")
    synthesize(root, sequences=1, frames=6, seed=5)  # train: sequence 00
    synthesize(root, sequences=1, frames=2, seed=6, first_sequence=8)  # val: sequence 08, another world
    return root


def _config(tmp_path: Path, data_root: Path, **over) -> TrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model_yaml = tmp_path / "micro.yaml"
    model_yaml.write_text(yaml.safe_dump(MICRO))
    base = {"name": "t", "model": str(model_yaml), "data_root": str(data_root), "stage": "student", "epochs": 2,
            "max_steps": 6, "warmup_iters": 2, "num_workers": 0, "out_dir": str(tmp_path / "run"), "log_every": 1,
            "eval_every": 0}  # fmt: skip
    base.update(over)
    return TrainConfig.from_dict(base)


def test_lr_schedule_warmup_then_cosine():
    assert lr_lambda(0, 500, 10_000) == pytest.approx(1 / 500)
    assert lr_lambda(499, 500, 10_000) == pytest.approx(1.0)
    assert lr_lambda(5250, 500, 10_000) == pytest.approx(0.5)
    assert lr_lambda(10_000, 500, 10_000) == pytest.approx(0.0)


def test_resume_continues_the_loss_curve_exactly(tmp_path, data_root):
    torch.set_num_threads(2)
    straight = train(_config(tmp_path / "a", data_root), device="cpu", progress=False)
    assert straight["step"] == 6 and len(straight["losses"]) == 6
    cfg_b = _config(tmp_path / "b", data_root)
    first = train(cfg_b, device="cpu", progress=False, stop_after=4)  # crosses an epoch boundary (3 steps/epoch)
    ckpt = cfg_b.output_dir / "last.pt"
    assert load_checkpoint(ckpt)["step"] == 4
    rest = train(cfg_b, resume=str(ckpt), device="cpu", progress=False)
    resumed = first["losses"] + rest["losses"]
    np.testing.assert_allclose(resumed, straight["losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(rest["model"].state_dict().values(), straight["model"].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the run left its logs and a final validation
    csv = (cfg_b.output_dir / "metrics.csv").read_text()
    assert "loss/total" in csv and "val/miou" in csv
    assert list((cfg_b.output_dir / "tensorboard").glob("events.*"))
    data = load_checkpoint(ckpt)
    assert set(data) >= {"optimizer", "scheduler", "step", "metrics", "code_version", "model_config", "weights"}
    assert 0 <= data["metrics"]["completion_iou"] <= 100


def test_resume_with_another_config_names_the_keys(tmp_path, data_root):
    cfg = _config(tmp_path, data_root, max_steps=1)
    train(cfg, device="cpu", progress=False)
    other = dict(MICRO, embed_dim=32, heads=4)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    cfg2 = _config(tmp_path, data_root, max_steps=2, model=str(tmp_path / "other.yaml"))
    with pytest.raises(CheckpointError, match=r"mismatched keys: \['embed_dim', 'heads'\]"):
        train(cfg2, resume=str(cfg.output_dir / "last.pt"), device="cpu", progress=False)


def test_fine_tuning_starts_from_the_given_weights_and_records_them(tmp_path, data_root):
    """init_weights starts a run from another run's weights (training checkpoint or exported
    model), with a fresh optimizer; weights of another architecture or a teacher are refused
    before any data is read, naming what does not fit."""
    from monoocc_ros.checkpoint import export_weights

    torch.set_num_threads(2)
    base = train(_config(tmp_path / "base", data_root, max_steps=2), device="cpu", progress=False)
    source = tmp_path / "base" / "run" / "last.pt"
    exported = tmp_path / "exported.pt"
    export_weights(source, exported)
    # lr 1e-12: one step moves no parameter measurably, so the run's parameters are its first ones
    # (BatchNorm's running statistics do move: they are not compared)
    for init in (source, exported):
        tuned = _config(tmp_path / f"tuned_{init.stem}", data_root, max_steps=1, lr=1e-12, init_weights=str(init))
        out = train(tuned, device="cpu", progress=False)
        pairs = zip(out["model"].named_parameters(), base["model"].parameters(), strict=True)
        for (key, a), b in pairs:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=key)
        ckpt = load_checkpoint(tuned.output_dir / "last.pt")
        assert ckpt["init_sha256"] == sha256(init) and ckpt["step"] == 1
        assert ckpt["train_config"]["init_weights"] == str(init)
    # without init_weights the same config starts elsewhere (the check above can fail)
    fresh = train(_config(tmp_path / "fresh", data_root, max_steps=1, lr=1e-12), device="cpu", progress=False)
    pairs = zip(fresh["model"].parameters(), base["model"].parameters(), strict=True)
    assert not all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in pairs)
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(dict(MICRO, embed_dim=32)))
    wide = _config(tmp_path / "wide", data_root, model=str(tmp_path / "wide.yaml"), init_weights=str(source))
    with pytest.raises(CheckpointError, match=r"init_weights .*last.pt does not fit the model: shape mismatch"):
        train(wide, device="cpu", progress=False)
    assert not (tmp_path / "wide" / "run").exists()
    with pytest.raises(FileNotFoundError, match=r"^init_weights .*nope.pt does not exist$"):
        train(_config(tmp_path / "x", data_root, init_weights=str(tmp_path / "nope.pt")), device="cpu", progress=False)


def test_two_process_ddp_keeps_ranks_identical(tmp_path, data_root):
    cfg = _config(tmp_path, data_root, max_steps=2, epochs=1, warmup_iters=1)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()}))
    script = tmp_path / "ddp_check.py"
    script.write_text(
        "import os, sys, torch, torch.distributed as dist\n"
        "from monoocc_ros.trainer.config import TrainConfig\n"
        "from monoocc_ros.trainer.engine import train\n"
        "torch.set_num_threads(1)\n"
        "r = train(TrainConfig.from_yaml(sys.argv[1]), device='cpu', progress=False)\n"
        "flat = torch.cat([p.detach().flatten() for p in r['model'].parameters()])\n"
        "gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(gathered, flat)\n"
        "diff = max(float((g - gathered[0]).abs().max()) for g in gathered)\n"
        # One write(2) per rank: both ranks share the pipe, and print() under PYTHONUNBUFFERED
        # writes each argument separately, so two ranks' lines could interleave mid-line.
        "os.write(1, f'STEPS {r[\"step\"]} MAXDIFF {diff} WORLD {dist.get_world_size()}\\n'.encode())\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(29500 + os.getpid() % 1000), str(script), str(cfg_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STEPS")]
    assert len(lines) == 2, proc.stdout
    for ln in lines:
        parts = ln.split()
        assert parts[1] == "2" and parts[5] == "2"
        assert float(parts[3]) == 0.0  # DDP keeps both ranks' weights bit-identical


def test_eval_writes_semantickitti_predictions(tmp_path, data_root):
    cfg = _config(tmp_path, data_root, max_steps=1)
    train(cfg, device="cpu", progress=False)
    out = tmp_path / "preds"
    scores = evaluate_checkpoint(
        str(cfg.output_dir / "last.pt"), str(data_root), "val", predictions=str(out), device="cpu", progress=False
    )
    files = sorted((out / "sequences" / "08" / "predictions").glob("*.label"))
    assert [f.name for f in files] == ["000000.label", "000001.label"]
    raw = F.read_voxel_labels(files[0])
    assert raw.dtype == np.uint16 and raw.shape == (256, 256, 32)
    assert (raw_to_train(raw) != 255).all()  # raw ids from the inverse map
    assert scores.num_voxels > 0
    with pytest.raises(FileNotFoundError, match=r"none of the test split's sequences .* \(have \['00', '08'\]\)"):
        evaluate_checkpoint(str(cfg.output_dir / "last.pt"), str(data_root), "test", device="cpu", progress=False)


def test_eval_scores_the_depth_head_against_each_frames_lidar_depth(tmp_path, data_root):
    from monoocc_ros.checkpoint import build_model_from_checkpoint
    from monoocc_ros.depth_metrics import DepthMetrics
    from monoocc_ros.trainer.engine import make_dataset, model_inputs

    cfg = _config(tmp_path, data_root, max_steps=1)
    train(cfg, device="cpu", progress=False)
    depth = DepthMetrics()
    evaluate_checkpoint(
        str(cfg.output_dir / "last.pt"), str(data_root), "val", device="cpu", progress=False, depth=depth
    )
    got = depth.scores()
    # Independently: the depth head's output on each validation frame against its LiDAR depth.
    model, _ = build_model_from_checkpoint(cfg.output_dir / "last.pt")
    dataset = make_dataset(model.cfg, str(data_root), ("08",), model.cfg.frame_offsets)
    rel, rmse, delta1, pixels = [], [], [], 0
    for i in range(len(dataset)):
        item = dataset[i]
        batch = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
        with torch.inference_mode():
            d = model.predict_grid_and_depth(*model_inputs(batch, model.cfg, torch.device("cpu")))[2][0].numpy()
        g = item["depth_2d"].numpy()
        valid = (g > 0) & (g <= model.cfg.depth_max)
        rel.append(np.mean(np.abs(d[valid] - g[valid]) / g[valid]))
        rmse.append(np.sqrt(np.mean((d[valid] - g[valid]) ** 2)))
        delta1.append(100 * np.mean(np.maximum(d[valid] / g[valid], g[valid] / d[valid]) < 1.25))
        pixels += int(valid.sum())
    assert got is not None and got.frames == 2 and got.pixels == pixels > 100
    assert got.abs_rel == pytest.approx(np.mean(rel), rel=1e-5)
    assert got.rmse == pytest.approx(np.mean(rmse), rel=1e-5)
    assert got.delta1 == pytest.approx(np.mean(delta1), abs=1e-6)
    assert got.max_depth == model.cfg.depth_max


def test_the_shipped_student_config_distils_from_the_shipped_teacher():
    """No teacher run is needed before distilling the shipped student: its config names the
    committed teacher, which loads frozen, and the run record holds that very file's hash."""
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.trainer.engine import load_teacher

    cfg = TrainConfig.from_yaml("config/train/student_tiny.yaml")
    assert cfg.teacher_checkpoint == "models/teacher_tiny.pt"
    teacher = load_teacher(cfg, load_named_config(cfg.model), torch.device("cpu"))
    assert teacher is not None and teacher.cfg.name == "teacher_tiny" and teacher.cfg.privileged_lidar
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    record = json.loads(Path("results/runs/teacher_tiny.json").read_text())
    assert record["exported_sha256"] == sha256(cfg.teacher_checkpoint)
    assert record["validation"]["step"] == record["step"] == 4000


def test_the_shipped_student_is_its_configs_run():
    """models/student_tiny.pt is what config/train/student_tiny.yaml trains: the run record's
    recipe is the config's, its teacher is the committed one, and it holds the shipped file's hash
    and validation scores."""
    cfg = TrainConfig.from_yaml("config/train/student_tiny.yaml")
    record = json.loads(Path("results/runs/student_tiny.json").read_text())
    recipe = ("lr", "max_steps", "epochs", "seed", "warmup_iters", "weight_decay", "grad_clip", "batch_size")
    assert {k: record["train_config"][k] for k in recipe} == {k: getattr(cfg, k) for k in recipe}
    assert record["train_config"]["teacher_checkpoint"] == cfg.teacher_checkpoint
    assert record["teacher_sha256"] == sha256(cfg.teacher_checkpoint)
    assert record["shipped_sha256"] == sha256("models/student_tiny.pt")
    shipped = load_checkpoint("models/student_tiny.pt")
    assert shipped["step"] == record["step"] == cfg.max_steps
    assert shipped["metrics"]["miou"] == record["validation"]["miou"]


def test_the_model_card_quotes_the_shipped_students_validation():
    """models/README.md states the figures of models/student_tiny_eval.json (the shipped file's
    `monoocc eval --controls`), so replacing the model without its card fails here; and no
    template placeholder such as {WALL} is left unfilled in any committed Markdown file."""
    card = Path("models/README.md").read_text()
    scores = json.loads(Path("models/student_tiny_eval.json").read_text())
    record = json.loads(Path("results/runs/student_tiny.json").read_text())
    assert scores["miou"] == record["validation"]["miou"]
    tables = [[cell.strip().strip("*") for cell in line.split("|")[1:-1]] for line in card.splitlines()]
    rows = {cells[0]: cells[1:] for cells in tables if cells}
    shipped = next(row for name, row in rows.items() if name.startswith("student_tiny (shipped"))
    other = rows["the same model, other worlds' images (own calibration)"]
    prior = next(row for name, row in rows.items() if name.startswith("image-free prior"))
    for row, s in ((shipped, scores), (other, scores["controls"]["other_image"]), (prior, scores["controls"]["prior"])):
        # columns: precision, recall, completion IoU, mIoU, then classes
        assert row[2:4] == [f"{s['completion_iou']:.2f}", f"{s['miou']:.2f}"], row
    tracked = subprocess.run(["git", "ls-files", "*.md"], capture_output=True, text=True, check=True).stdout.split()
    unfilled = {f: re.findall(r"\{[A-Z][A-Z0-9_]{2,}\}", Path(f).read_text()) for f in tracked}
    assert not {f: found for f, found in unfilled.items() if found}


def test_datasets_and_runs_stay_out_of_git_even_as_symlinks():
    """data/ and runs/ hold gigabytes and checkpoints. Users often make them symlinks to a
    larger disk, and a `/data/` pattern ignores only a directory: `git add -A` committed such a
    symlink, and checking that commit out elsewhere deleted the real, ignored dataset folder."""
    for path in ("data", "runs"):  # a path below a symlink is refused by git, so the names themselves
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path]).returncode == 0, path


def test_ablation_table_reports_spread_and_missing_runs():
    from monoocc_ros.trainer.ablation import RARE_CLASSES, format_results

    assert set(RARE_CLASSES) == {2, 3, 6, 7, 8, 19}  # bicycle, motorcycle, person, bicyclist, motorcyclist, sign
    run = {"completion_iou": 50.0, "miou": 20.0, "small_object_iou": 5.0, "class_iou": [0.0] * 20}
    run2 = dict(run, miou=24.0)
    other = {"completion_iou": 45.0, "miou": 9.0, "small_object_iou": 0.0, "class_iou": [0.0] * 20}
    records = [{"metrics": run, "controls": {"other_image": other}}, {"metrics": run2}]
    text = format_results({"student (full)": records, "teacher": []}, [42, 43])
    # The other-image control counts only the runs that measured it (n=1 of 2).
    assert "| student (full) | 50.00 ± 0.00 (n=2) | 22.00 ± 2.00 (n=2) | 9.00 (n=1) | 5.00 ± 0.00 (n=2) |" in text
    assert "| teacher | not run | not run | not run | not run | not run |" in text
    assert "| image-free prior (control) | not computed | not computed |" in text
    prior = {"metrics": dict(run, completion_iou=40.88, miou=4.11, small_object_iou=0.5)}
    text = format_results({"student (full)": [{"metrics": run}]}, [42], prior=prior)
    assert "| student (full) | 50.00 (n=1) | 20.00 (n=1) | not measured |" in text
    assert "| image-free prior (control) | 40.88 | 4.11 | (no image) | 0.50 | 0.00 |" in text
    assert "Teacher's margin over the full student: no seed has both runs yet." in text
    teacher = [{"seed": 42, "metrics": dict(run, miou=27.0)}, {"seed": 43, "metrics": dict(run, miou=30.0)},
               {"seed": 44, "metrics": dict(run, miou=99.0)}]  # fmt: skip
    students = [{"seed": 43, "metrics": run2}, {"seed": 42, "metrics": run}]  # seed 44's student has not run
    text = format_results({"teacher": teacher, "student (full)": students}, [42, 43, 44])
    assert "margin over the full student: +6.50 ± 0.50 mIoU (n=2; per seed 42: +7.00, 43: +6.00)." in text


def test_the_ablation_trains_new_seeds_at_the_learning_rate_of_its_committed_records(tmp_path):
    """The shipped configs may change their lr; a new ablation seed must still be comparable."""
    from monoocc_ros.trainer.ablation import VARIANTS, run_config

    records = [json.loads(p.read_text()) for p in Path("results/ablation").glob("*_seed*.json")]
    assert len(records) >= 15
    for variant in VARIANTS:
        recorded = {r["train_config"]["lr"] for r in records if r["variant"] == variant}
        assert recorded and run_config(variant, 99, "data/benchmark", 1500, 3000, tmp_path).lr in recorded


def test_ablation_tabulates_committed_records_without_training(tmp_path):
    """`make ablation` resumes across machines: a run whose record exists is read, not retrained."""
    from monoocc_ros.trainer.ablation import run, slug

    records = tmp_path / "records"
    records.mkdir()
    for seed, full, nodistill in ((42, 20.0, 18.0), (43, 22.0, 18.5), (44, 21.0, 17.5)):
        for variant, miou in (("student (full)", full), ("student w/o distillation", nodistill)):
            metrics = {"completion_iou": 50.0, "miou": miou, "small_object_iou": 1.0, "class_iou": [0.0] * 20}
            (records / f"{slug(variant, seed)}.json").write_text(json.dumps({"metrics": metrics}))
    prior = {"completion_iou": 40.0, "miou": 4.0, "small_object_iou": 0.0, "class_iou": [0.0] * 20}
    (records / "prior.json").write_text(json.dumps({"metrics": prior}))
    text = run("unused", [42, 43, 44], str(tmp_path / "runs"), execute=False, results=str(tmp_path / "r.md"),
               records=str(records))  # fmt: skip
    assert "| student (full) | 50.00 ± 0.00 (n=3) | 21.00 ± 0.82 (n=3) |" in text
    assert "| student w/o distillation | 50.00 ± 0.00 (n=3) | 18.00 ± 0.41 (n=3) |" in text
    assert "lower (-3.00 mIoU, beyond the seed spread 0.82)" in text
    assert "| teacher | not run |" in text and not (tmp_path / "runs").exists()
    assert "| image-free prior (control) | 40.00 | 4.00 | (no image) |" in text


def test_ablation_adds_controls_from_the_runs_own_checkpoint(tmp_path, data_root):
    """Records written before the controls existed get them from their run's checkpoint
    (`monoocc ablation --no-train --controls`), once, and only when that checkpoint is the run
    the record describes; the prior is computed once, as `monoocc eval --controls` scores it."""
    from monoocc_ros.trainer.ablation import add_controls, finished_metrics, prior_record, run, slug
    from monoocc_ros.trainer.evaluate import evaluate_other_image, evaluate_with_controls

    out, records = tmp_path / "runs", tmp_path / "records"
    cfg = _config(tmp_path, data_root, max_steps=1, out_dir=str(out / slug("student (full)", 42)))
    train(cfg, device="cpu", progress=False)
    metrics = finished_metrics(cfg.output_dir)
    assert metrics is not None
    records.mkdir()
    record, stale = records / f"{slug('student (full)', 42)}.json", tmp_path / "stale.json"
    record.write_text(json.dumps({"data_root": "elsewhere", "metrics": metrics}))
    stale.write_text(json.dumps({"metrics": dict(metrics, miou=metrics["miou"] + 1)}))
    with pytest.warns(UserWarning, match="is not the run of"):
        add_controls(stale, cfg.output_dir, str(data_root), "cpu")
    assert "controls" not in json.loads(stale.read_text())

    text = run(str(data_root), [42], str(out), execute=False, results=str(tmp_path / "r.md"), records=str(records),
               controls=True)  # fmt: skip
    data = json.loads(record.read_text())
    ckpt = str(cfg.output_dir / "last.pt")
    expected, donors = evaluate_other_image(ckpt, str(data_root), "val", None, "cpu", False)
    assert data["controls"]["image_donors"] == donors == {"08": "00"}  # the val world sees the train world's images
    assert data["controls"]["other_image"]["miou"] == pytest.approx(expected.miou)
    assert data["metrics"] == metrics and f"| {expected.miou:.2f} (n=1) |" in text
    report = evaluate_with_controls(ckpt, str(data_root), "val", device="cpu", progress=False)
    prior = json.loads((records / "prior.json").read_text())
    assert prior["metrics"]["completion_iou"] == pytest.approx(report.prior.completion_iou)
    assert prior["metrics"]["miou"] == pytest.approx(report.prior.miou)
    assert f"| image-free prior (control) | {report.prior.completion_iou:.2f} |" in text

    before = record.read_bytes()
    add_controls(record, tmp_path / "no_such_run", str(data_root), "cpu")  # already measured: untouched
    add_controls(record, cfg.output_dir, str(data_root), "cpu")
    assert record.read_bytes() == before
    assert prior_record(tmp_path / "none.json", None) is None  # --no-train alone: nothing invented
    assert prior_record(records / "prior.json", None) == prior  # read back, not recomputed


def test_train_config_errors_name_the_key(tmp_path):
    from monoocc_ros.model.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown training key\(s\) \['epochz'\]"):
        TrainConfig.from_dict({"name": "x", "model": "student_tiny", "data_root": ".", "epochz": 3})
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['data_root'\]"):
        TrainConfig.from_dict({"name": "x", "model": "student_tiny"})
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig.from_dict({"name": "x", "model": "student_tiny", "data_root": ".", "stage": "both"})
    with pytest.raises(ConfigError, match=r"item_cache must be auto, off or a folder, got False \(quote 'off'"):
        TrainConfig.from_dict({"name": "x", "model": "student_tiny", "data_root": ".", "item_cache": False})
    cfg = TrainConfig.from_dict(
        {"name": "x", "model": "student_tiny", "data_root": ".", "model_overrides": {"heads": 5}}
    )
    with pytest.raises(ConfigError, match="divisible by heads"):
        cfg.model_config()


def test_distillation_from_a_trained_teacher(tmp_path, data_root):
    """A privileged teacher (other frames and accumulated LiDAR) trains; a student distils from it
    with the teacher's outputs cached and gets exactly the losses of running the teacher live; a
    cache that belongs to another teacher is refused with the reason."""
    from monoocc_ros.trainer.teacher_cache import TeacherCacheError

    teacher_yaml = tmp_path / "micro_teacher.yaml"
    teacher_yaml.write_text(
        yaml.safe_dump(
            {
                **MICRO,
                "name": "micro_teacher",
                "frame_offsets": [-1, 0, 1],
                "privileged_lidar": [-2, -1, 0],
                "cross_view_blocks": 1,
                "cross_view_window": 4,
            }
        )
    )
    t_cfg = _config(tmp_path / "t", data_root, stage="teacher", model=str(teacher_yaml), max_steps=1)
    train(t_cfg, device="cpu", progress=False)
    ckpt = str(t_cfg.output_dir / "last.pt")
    with pytest.raises(ValueError, match="nothing would be distilled"):
        train(_config(tmp_path / "s0", data_root, max_steps=1, teacher_checkpoint=ckpt), device="cpu", progress=False)
    cache = tmp_path / "teacher_cache"
    runs = {}
    for mode in ("off", str(cache)):
        s_cfg = _config(
            tmp_path / f"s{len(runs)}",
            data_root,
            max_steps=2,
            teacher_checkpoint=ckpt,
            teacher_cache=mode,
            model_overrides={"loss": {"distill_feature": 1.0}},
        )
        runs[mode] = train(s_cfg, device="cpu", progress=False)
        assert runs[mode]["step"] == 2
        header = (s_cfg.output_dir / "metrics.csv").read_text().splitlines()[0]
        assert "loss/distill_feature" in header
    assert (cache / "meta.json").is_file() and not list(tmp_path.glob("teacher_cache.*.tmp"))
    np.testing.assert_allclose(runs[str(cache)]["losses"], runs["off"]["losses"], rtol=1e-6)
    train(t_cfg, device="cpu", progress=False, stop_after=1)  # retrained: another checkpoint at the same path
    with pytest.raises(TeacherCacheError, match="another teacher checkpoint"):
        train(_config(tmp_path / "s9", data_root, max_steps=1, teacher_checkpoint=ckpt, teacher_cache=str(cache),
                      model_overrides={"loss": {"distill_feature": 1.0}}), device="cpu", progress=False)  # fmt: skip
    # A distilled run resumes only with the teacher it started with ...
    s1 = _config(tmp_path / "s1", data_root, max_steps=3, teacher_checkpoint=ckpt, teacher_cache="off",
                 model_overrides={"loss": {"distill_feature": 1.0}})  # fmt: skip
    with pytest.raises(CheckpointError, match="another teacher"):
        train(s1, resume=str(s1.output_dir / "last.pt"), device="cpu", progress=False)
    # ... and never from a teacher whose own run has not finished (it would move under the student).
    t2 = _config(tmp_path / "t2", data_root, stage="teacher", model=str(teacher_yaml), max_steps=2)
    train(t2, device="cpu", progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"unfinished run \(step 1, epoch 0 of max_steps 2"):
        train(_config(tmp_path / "s8", data_root, max_steps=1, teacher_checkpoint=str(t2.output_dir / "last.pt"),
                      model_overrides={"loss": {"distill_feature": 1.0}}), device="cpu", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="needs a multi-frame model"):
        train(_config(tmp_path / "x", data_root, stage="teacher", max_steps=1), device="cpu", progress=False)


def test_ctrl_c_saves_and_resumes_and_a_corrupt_file_fails_before_step_one(tmp_path, data_root):
    """`monoocc train` stopped with SIGINT saves last.pt at a whole step and says how to resume;
    a corrupt voxel file anywhere in the splits fails before the first step, naming it."""
    import shutil
    import signal
    import time

    cfg_path = tmp_path / "train.yaml"
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    cfg = {
        "name": "sig",
        "model": str(tmp_path / "micro.yaml"),
        "data_root": str(data_root),
        "epochs": 200,
        "num_workers": 1,
        "out_dir": str(tmp_path / "run"),
        "log_every": 1,
        "eval_every": 0,
        "warmup_iters": 1,
    }
    cfg_path.write_text(yaml.safe_dump(cfg))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "monoocc_ros.cli", "train", "--config", str(cfg_path), "--device",
                             "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    csv_path = tmp_path / "run" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not csv_path.exists() or len(csv_path.read_text().splitlines()) < 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted: saved step" in err and "--resume" in err
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] >= 2 and "optimizer" in saved

    broken = tmp_path / "broken"
    shutil.copytree(data_root, broken)
    label = broken / "sequences" / "08" / "voxels" / "000001.label"
    label.write_bytes(label.read_bytes()[:1000])
    with pytest.raises(F.FormatError, match=r"08/voxels/000001\.label \(1000 bytes"):
        train(_config(tmp_path / "b", broken, max_steps=1), device="cpu", progress=False)
    assert not (tmp_path / "b" / "run").exists()  # nothing trained, nothing written


def test_best_threshold_maximises_completion_iou():
    from monoocc_ros.trainer.calibrate import BINS, best_threshold

    occupied, empty = np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)
    occupied[60] = 80  # occupied voxels with P = 0.30..0.305 and 0.90
    occupied[180] = 20
    empty[40] = 1000  # empty voxels with P = 0.20 and 0.55
    empty[110] = 10
    t, iou, iou_half = best_threshold(occupied, empty)
    # Above 0.20 and at most 0.30 keeps every occupied voxel and drops 1000 empty ones:
    # IoU 100 / (100 + 10); at 0.5 only the 20 confident voxels: 20 / (20 + 10 + 80).
    assert 0.2 < t <= 0.3 and iou == pytest.approx(100 * 100 / 110) and iou_half == pytest.approx(100 * 20 / 110)


def test_per_class_thresholds_maximise_completion_iou_plus_miou():
    """A class's threshold decides only whether its predicted voxels are it or empty: class c's
    IoU = TP_c / (N_c + FP_c). Worked example, 10 bins (edges 0.0, 0.1, ...):
    class 1 (thin, placed loosely): 20 true voxels at P 0.25, 10 empty voxels at P 0.05; N_1 = 20.
    class 2 (flat, placed well): 100 true voxels at P 0.95, 50 empty voxels at P 0.45; N_2 = 100."""
    from monoocc_ros.trainer import calibrate as cal

    bins = 10
    h = cal.ClassHistograms.zeros()
    h.same, h.occupied, h.empty = (np.zeros((20, bins), np.int64) for _ in range(3))
    h.same[1, 2] = h.occupied[1, 2] = 20
    h.empty[1, 0] = 10
    h.same[2, 9] = h.occupied[2, 9] = 100
    h.empty[2, 4] = 50
    h.targets[1], h.targets[2], h.occupied_total = 20, 100, 120
    original = cal.BINS
    cal.BINS = bins
    try:
        half = np.full(20, bins // 2)
        iou, miou = h.scores(half)  # at 0.5: only class 2; class 1 is lost
        assert iou == pytest.approx(100 * 100 / 120) and miou == pytest.approx(100 * (0 + 1) / 19)
        edges = cal.best_class_thresholds(h)
        # Class 1's voxels count once its threshold is below 0.25 but above 0.05 (edges 1, 2);
        # the ground keeps any edge between 0.5 and 0.9 (the first found is kept).
        assert edges[1] in (1, 2) and 5 <= edges[2] <= 9
        iou, miou = h.scores(edges)
        assert iou == pytest.approx(100.0) and miou == pytest.approx(100 * 2 / 19)
    finally:
        cal.BINS = original


def test_calibrate_writes_the_threshold_on_training_frames_only(tmp_path, data_root):
    import dataclasses

    from monoocc_ros.checkpoint import save_checkpoint
    from monoocc_ros.model.monoocc import MonoOcc
    from monoocc_ros.trainer.calibrate import calibrate

    cfg = _config(tmp_path, data_root)
    torch.manual_seed(0)
    model = MonoOcc(dataclasses.replace(cfg.model_config(), head="fine", semantic_scale=4))
    save_checkpoint(tmp_path / "m.pt", model.cfg, model.state_dict(), step=7)
    result = calibrate(str(tmp_path / "m.pt"), str(data_root), str(tmp_path / "cal.pt"), frames=3, progress=False)
    assert result.frames == 3 and result.sequences == ("00",) and 0 < result.threshold < 1
    data = load_checkpoint(tmp_path / "cal.pt")
    assert data["model_config"].occupancy_threshold == result.threshold and data["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, data["weights"][k]), k
    # The stored threshold is the decision predict_grid (node, eval, ONNX) makes.
    from monoocc_ros.checkpoint import build_model_from_checkpoint

    calibrated, _ = build_model_from_checkpoint(tmp_path / "cal.pt")
    images, projections = torch.rand(1, 1, 3, 94, 310), torch.rand(1, 1, 3, 4) * 100
    with torch.inference_mode():
        labels, _ = calibrated.predict_grid(images, projections)
        p = calibrated(images, projections)["occupancy"].sigmoid()
    assert torch.equal(labels > 0, p > result.threshold) and 0 < (labels > 0).float().mean() < 1
    per = calibrate(
        str(tmp_path / "m.pt"), str(data_root), str(tmp_path / "pc.pt"), frames=3, progress=False, per_class=True
    )
    assert len(per.class_thresholds) == 19 and per.miou is not None and per.miou_at_half is not None
    assert sum((per.iou, per.miou)) >= sum((per.iou_at_half, per.miou_at_half)) - 1e-9  # never worse than 0.5
    per_class, _ = build_model_from_checkpoint(tmp_path / "pc.pt")
    assert per_class.cfg.class_occupancy_thresholds == per.class_thresholds
    with torch.inference_mode():
        labels, _ = per_class.predict_grid(images, projections)
        out = per_class(images, projections)
    predicted = out["logits"][:, 1:].argmax(1) + 1
    f = out["occupancy"].shape[1] // predicted.shape[1]  # output voxels per semantic voxel, per axis
    cut = torch.tensor(per.class_thresholds)[predicted - 1]
    cut = cut.repeat_interleave(f, 1).repeat_interleave(f, 2).repeat_interleave(f, 3)
    assert torch.equal(labels > 0, out["occupancy"].sigmoid() > cut)
    # The figures calibrate reports are the official metrics of the decision it stored, on its frames.
    from monoocc_ros.metrics import SSCMetrics
    from monoocc_ros.trainer.calibrate import calibration_frames
    from monoocc_ros.trainer.engine import expand_labels, make_dataset

    frames = make_dataset(per_class.cfg, str(data_root), ("00",), per_class.cfg.frame_offsets, ())
    metrics = SSCMetrics()
    with torch.inference_mode():
        for i in calibration_frames(len(frames), 3):
            item = frames[int(i)]
            labels, _ = per_class.predict_grid(item["image"][None, None], item["projection"][None, None])
            metrics.update(expand_labels(labels, per_class.cfg.grid)[0].numpy(), item["target"].numpy())
    official = metrics.scores()
    assert official.completion_iou == pytest.approx(per.iou, abs=0.05)
    assert official.miou == pytest.approx(per.miou, abs=0.05)
    with pytest.raises(ValueError, match=r"\['08'\] belong to the validation"):
        calibrate(str(tmp_path / "m.pt"), str(data_root), str(tmp_path / "x.pt"), sequences=("08",), progress=False)
    with pytest.raises(ValueError, match="is the input checkpoint"):
        calibrate(str(tmp_path / "m.pt"), str(data_root), str(tmp_path / "m.pt"), progress=False)
