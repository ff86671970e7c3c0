"""The derived-file caches: `monoocc cache` reports and frees them, and the ablation frees each
seed's teacher cache once its distilled students are recorded (a full disk breaks everything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monoocc_ros.cache import clear, remove_teacher_caches, usage
from monoocc_ros.checkpoint import sha256
from monoocc_ros.cli import main


def _fill(folder: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * size)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MONOOCC_CACHE", str(root))
    _fill(root / "items", {"a/000000.npz": 1000, "a/000001.npz": 500, "b/000000.npz": 250})
    _fill(root / "teacher", {"aaaaaaaaaaaa-111/voxel_features.npy": 4000, "bbbbbbbbbbbb-222/voxel_features.npy": 3000})
    return root


def test_usage_counts_every_file_of_each_kind(cache):
    rows = {r.kind: r for r in usage()}
    assert (rows["items"].entries, rows["items"].bytes) == (2, 1750)
    assert (rows["teacher"].entries, rows["teacher"].bytes) == (2, 7000)
    assert (rows["onnx"].entries, rows["onnx"].bytes) == (0, 0)  # never written


def test_clear_removes_only_the_kinds_named(cache):
    assert clear(["items"]) == 1750
    assert not (cache / "items").exists() and (cache / "teacher").is_dir()
    with pytest.raises(ValueError, match="unknown cache kind"):
        clear(["bogus"])


def test_remove_teacher_caches_matches_the_checkpoint_only(cache):
    assert remove_teacher_caches("aaaaaaaaaaaa" + "f" * 52) == 4000
    assert [p.name for p in (cache / "teacher").iterdir()] == ["bbbbbbbbbbbb-222"]
    assert remove_teacher_caches("c" * 64) == 0


def test_cli_reports_and_clears(cache, capsys):
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "items" in out and "1.8 kB" in out and "7.0 kB" in out
    assert main(["cache", "--clear", "teacher"]) == 0
    assert "freed 7.0 kB (teacher)" in capsys.readouterr().out
    assert not (cache / "teacher").exists() and (cache / "items").is_dir()
    assert main(["cache", "--clear"]) == 0  # all kinds
    assert not (cache / "items").exists()
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line, exit 2
        main(["cache", "--clear", "bogus"])
    assert exc.value.code == 2


def test_ablation_frees_a_seeds_teacher_cache_once_its_distilled_students_are_recorded(cache, tmp_path):
    from monoocc_ros.trainer.ablation import VARIANTS, release_teacher_cache, slug

    out, records = tmp_path / "runs", tmp_path / "records"
    teacher = out / slug("teacher", 7) / "last.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"a teacher checkpoint")
    records.mkdir()
    mine = cache / "teacher" / f"{sha256(teacher)[:12]}-333"
    _fill(mine, {"voxel_features.npy": 900})
    distilled = [v for v, (_, _, uses) in VARIANTS.items() if uses]
    assert len(distilled) == 3
    for variant in distilled[:-1]:
        (records / f"{slug(variant, 7)}.json").write_text(json.dumps({"seed": 7}))
        assert release_teacher_cache(7, out, records) == 0  # a distilled student still reads it
        assert mine.is_dir()
    (records / f"{slug(distilled[-1], 7)}.json").write_text(json.dumps({"seed": 7}))
    assert release_teacher_cache(7, out, records) == 900
    assert not mine.exists()
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == ["aaaaaaaaaaaa-111", "bbbbbbbbbbbb-222"]
