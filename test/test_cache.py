"""The derived-file caches: `monoocc cache` reports and frees them, and the ablation frees each
seed's teacher cache once its distilled students are recorded (a full disk breaks everything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monoocc_ros.cache import clear, remove_teacher_caches, usage
from monoocc_ros.checkpoint import sha256
from monoocc_ros.cli import main
from monoocc_ros.paths import cache_dir, cache_root
from monoocc_ros.trainer.teacher_cache import cache_key

SHA_A, SHA_B = "a" * 64, "b" * 64


def _fill(folder: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * size)


def _teacher_key(sha: str) -> str:
    return cache_key(sha, "data/benchmark", "print", [("00", 0)], False)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MONOOCC_CACHE", str(root))
    _fill(root / "items", {"a/000000.npz": 1000, "a/000001.npz": 500, "b/000000.npz": 250})
    _fill(root / "teacher", {f"{_teacher_key(SHA_A)}/voxel_features.npy": 4000})
    _fill(root / "teacher", {f"{_teacher_key(SHA_B)}/voxel_features.npy": 3000})
    return root


def test_usage_counts_every_file_of_each_kind(cache):
    rows = {r.kind: r for r in usage()}
    assert (rows["items"].entries, rows["items"].bytes) == (2, 1750)
    assert (rows["teacher"].entries, rows["teacher"].bytes) == (2, 7000)
    assert (rows["onnx"].entries, rows["onnx"].bytes) == (0, 0)  # never written
    assert usage([]) == []  # an empty selection is nothing, never everything


def test_clear_removes_only_the_kinds_named(cache):
    assert clear(["items", "items"]) == 1750  # each kind once
    assert list((cache / "items").iterdir()) == [] and len(list((cache / "teacher").iterdir())) == 2
    with pytest.raises(ValueError, match="unknown cache kind"):
        clear(["teacher", "bogus"])
    assert len(list((cache / "teacher").iterdir())) == 2  # nothing deleted before the error


def test_clear_empties_a_linked_kind_folder_and_never_follows_a_linked_entry(tmp_path, monkeypatch):
    """Caches this size often live on another disk behind a symbolic link."""
    big, elsewhere = tmp_path / "big_disk", tmp_path / "users_data"
    _fill(big, {"k1/000000.npz": 600})
    _fill(elsewhere, {"keep.bin": 800})
    root = tmp_path / "cache"
    root.mkdir()
    (root / "items").symlink_to(big)
    (big / "link").symlink_to(elsewhere)
    monkeypatch.setenv("MONOOCC_CACHE", str(root))
    assert usage(["items"])[0].bytes == 600
    assert clear(["items"]) == 600
    assert (root / "items").is_symlink() and list(big.iterdir()) == []
    assert (elsewhere / "keep.bin").stat().st_size == 800


def test_an_empty_cache_variable_is_the_default_never_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONOOCC_CACHE", "")
    assert cache_root() == Path.home() / ".cache" / "monoocc_ros"
    monkeypatch.setenv("MONOOCC_CACHE", "rel")
    assert cache_dir("onnx") == tmp_path / "rel" / "onnx"
    with pytest.raises(ValueError, match="unknown cache kind"):
        cache_dir("models")


def test_remove_teacher_caches_matches_the_checkpoint_only(cache):
    building = cache / "teacher" / f"{_teacher_key(SHA_A)}.123.tmp"  # another process's build
    _fill(building, {"voxel_features.npy": 10})
    assert remove_teacher_caches(SHA_A) == 4000
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == sorted([_teacher_key(SHA_B), building.name])
    assert remove_teacher_caches("c" * 64) == 0


def test_cli_reports_and_clears(cache, capsys):
    assert main(["cache"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "1.8 kB" in lines["items"] and "2 entries" in lines["items"]
    assert "7.0 kB" in lines["teacher"] and "8.8 kB" in lines["total"]
    assert main(["cache", "--clear", "teacher"]) == 0
    assert "freed 7.0 kB (teacher)" in capsys.readouterr().out
    assert list((cache / "teacher").iterdir()) == [] and usage(["items"])[0].bytes == 1750
    assert main(["cache", "--clear"]) == 0  # all kinds
    assert "freed 1.8 kB (items, teacher, prior, onnx)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line, exit 2
        main(["cache", "--clear", "bogus"])
    assert exc.value.code == 2


def test_ablation_frees_a_seeds_teacher_cache_once_its_distilled_students_are_recorded(cache, tmp_path):
    from monoocc_ros.trainer.ablation import VARIANTS, release_teacher_cache, slug

    out, records = tmp_path / "runs", tmp_path / "records"
    records.mkdir()
    assert release_teacher_cache(7, out, records) == 0  # no teacher checkpoint here: nothing to match
    teacher = out / slug("teacher", 7) / "last.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"a teacher checkpoint")
    mine = cache / "teacher" / _teacher_key(sha256(teacher))
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
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == sorted([_teacher_key(SHA_A), _teacher_key(SHA_B)])
