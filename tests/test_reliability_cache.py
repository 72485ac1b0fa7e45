"""Issue #18, defect 2: a corrupt or deleted cache entry, or a corrupt pack file, is never used.

The driver (``build_pack``: sweeps, ``python -m specialsam.trial``) re-encodes bad or missing
embedding entries and rebuilds a pack whose files fail their digests; a trial (``Pack`` opened
in another process, with no encoder and no images) refuses what fails its check with a one-line
error naming the file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from specialsam.errors import UserError
from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.models.tiny import build_tiny_sam
from tests.conftest import scene_task

SETTINGS = PackSettings(strategies=("center",))


def flip_bytes(path: Path) -> None:
    """Silent corruption: same size, a valid .npy header, garbage in the second half of the data."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def entry_file(root: Path, key: str) -> Path:
    """An embedding entry's array file (the cache's documented layout)."""
    return root / "embeddings" / key[:2] / f"{key}.npy"


def one_line(exc: pytest.ExceptionInfo, kind: str) -> str:
    """The message of a trial-side refusal: a one-line UserError (CorruptEntry / CorruptPack)."""
    msg = str(exc.value)
    assert "\n" not in msg and type(exc.value).__name__ == kind
    return msg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small pack (tiny-s, random init, seeded) built once; tests work on copies of its cache."""
    torch.manual_seed(0)
    sam = build_tiny_sam("tiny-s").eval()
    task = scene_task(n_train=4, n_val=2, n_test=3)
    ident = model_identity(sam, "tiny-s", "random-init")
    root = tmp_path_factory.mktemp("golden")
    cache = EmbeddingCache(root)
    folder = build_pack(task, sam, ident, cache, SETTINGS, progress=False)
    assert cache.encoder_calls == 4 + 2 + 3
    return {"sam": sam, "task": task, "ident": ident, "root": root, "pack": folder.name}


def copy_of(built, tmp_path: Path) -> tuple[Path, Path]:
    """(cache root, pack folder) of a private copy of the golden cache."""
    root = tmp_path / "cache"
    shutil.copytree(built["root"], root)
    return root, root / "packs" / built["pack"]


def rebuild(built, root: Path) -> tuple[Path, EmbeddingCache]:
    """What a rerun's driver does: a fresh cache object, ``build_pack`` on the same task."""
    cache = EmbeddingCache(root)
    folder = build_pack(built["task"], built["sam"], built["ident"], cache, SETTINGS, progress=False)
    return folder, cache


def test_corrupt_and_deleted_entries_are_reencoded_by_the_driver(built, tmp_path, capsys):
    root, folder = copy_of(built, tmp_path)
    golden = Pack(folder, EmbeddingCache(root))
    test_keys, train_keys = golden.split("test").emb_keys, golden.split("train").emb_keys
    original = golden.split("test").embeddings(range(3))
    for k in test_keys[:2]:
        flip_bytes(entry_file(root, k))  # the issue's probe: flipped bytes in cached test embeddings
    entry_file(root, train_keys[1]).unlink()  # and a deleted entry, its pack still present
    garbage = np.load(entry_file(root, test_keys[0])).astype(np.float32)
    assert not np.allclose(garbage, original[0], atol=0.1)  # the damage is real (inf/nan included)

    again, rerun = rebuild(built, root)
    assert again == folder  # same pack: only the entries were bad
    assert rerun.encoder_calls == 3  # the two corrupt entries and the deleted one, nothing else
    err = capsys.readouterr().err
    assert "2 corrupt embedding cache entries" in err and test_keys[0][:2] in err
    reopened = Pack(folder, EmbeddingCache(root))  # a trial's view, every entry checked on first read
    np.testing.assert_allclose(reopened.split("test").embeddings(range(3)), original, rtol=2e-3, atol=2e-3)
    assert reopened.split("train").embeddings([1]).shape == (1, 64, 16, 16)


@pytest.mark.parametrize("damage", ["flip", "delete", "sidecar"])
def test_bad_entry_read_inside_a_trial_is_a_one_line_error(built, tmp_path, damage):
    root, folder = copy_of(built, tmp_path)
    test = Pack(folder, EmbeddingCache(root)).split("test")
    arr = entry_file(root, test.emb_keys[1])
    if damage == "flip":
        flip_bytes(arr)
    elif damage == "delete":
        arr.unlink()
    else:
        arr.with_suffix(".json").write_text("{}")
    assert test.embeddings([0, 2]).shape == (2, 64, 16, 16)  # the good entries still load
    with pytest.raises(UserError) as exc:  # never the corrupt values, never a bare FileNotFoundError
        test.embeddings([0, 1])
    msg = one_line(exc, "CorruptEntry")
    assert str(arr) in msg and "rerun" in msg


def _edit_manifest(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["n_train_pool"] += 1  # still valid JSON: only the digest can tell
    (folder / "manifest.json").write_text(json.dumps(m))


def _flip_mask_row(folder: Path) -> None:
    path = folder / "train_masks.npy"
    data = bytearray(path.read_bytes())
    data[len(data) - 256 * 256 // 2] ^= 0xFF  # one byte in the middle of the last row
    path.write_bytes(bytes(data))


DAMAGE = {
    "manifest": (_edit_manifest, lambda p: Pack(p.folder, p.cache), "manifest.json"),
    "mask row": (_flip_mask_row, lambda p: p.split("train").masks[3], "train_masks.npy: mask row 3"),
    "decoder": (lambda f: flip_bytes(f / "decoder.pt"), lambda p: p.headless_model(), "decoder.pt"),
    "gt deleted": (lambda f: (f / "test_gt.npz").unlink(), lambda p: p.split("test").gt(0), "test_gt.npz"),
    "prompts": (
        lambda f: flip_bytes(f / "val_prompts_center.npz"),
        lambda p: p.split("val").prompts("center"),
        "val_prompts_center.npz",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_corrupt_pack_file_is_refused_in_a_trial_and_rebuilt_by_the_driver(built, tmp_path, capsys, kind):
    root, folder = copy_of(built, tmp_path)
    pack = Pack(folder, EmbeddingCache(root))
    train_mask, gt = np.asarray(pack.split("train").masks[3]), pack.split("test").gt(0)
    damage, read, named = DAMAGE[kind]
    damage(folder)

    with pytest.raises(UserError) as exc:  # a trial opening the damaged pack
        read(Pack(folder, EmbeddingCache(root)) if kind != "manifest" else pack)
    assert named in one_line(exc, "CorruptPack")

    again, rerun = rebuild(built, root)
    assert again == folder and rerun.encoder_calls == 0  # rebuilt in place; embeddings were fine
    assert re.search(rf"{re.escape(named.split(':')[0])}.*rebuilding the pack", capsys.readouterr().err)
    fresh = Pack(folder, EmbeddingCache(root))
    np.testing.assert_array_equal(fresh.split("train").masks[3], train_mask)
    np.testing.assert_array_equal(fresh.split("test").gt(0), gt)
    assert fresh.manifest["n_train_pool"] == 4 and fresh.headless_model() is not None
    assert fresh.split("val").prompts("center")[2].all()
    assert not list((root / "packs").glob(".corrupt-*"))  # the bad copy is gone


def test_issue_probe_baseline_after_flipped_and_deleted_entries(tmp_path, capsys):
    """The issue's probe through a CLI: a baseline, flipped bytes in its cached test embeddings
    and one deleted entry, the same command again: the same figures (re-encoded), exit 0."""
    from specialsam.trial import main

    cache = tmp_path / "cache"
    args = ["--task", "carpet", "--model", "tiny-s", "--strategies", "center", "--cache-dir", str(cache)]
    args += [f"--set={kv}" for kv in ["n_synthetic=8", "n_val=2", "standin_good=4", "standin_test=6"]]
    main([*args, "--baseline-only"])
    first = capsys.readouterr().out
    (folder,) = (cache / "packs").iterdir()
    keys = json.loads((folder / "manifest.json").read_text())["splits"]["test"]["emb"]
    for k in keys[:-1]:
        flip_bytes(entry_file(cache, k))
    entry_file(cache, keys[-1]).unlink()

    main([*args, "--baseline-only"])
    out, err = capsys.readouterr()
    assert out == first  # before the fix: a near-zero baseline (flips) or a FileNotFoundError (deletion)
    assert f"{len(keys) - 1} corrupt embedding cache entries" in err


def test_cache_integrity_benchmark_smoke(tmp_path):
    """benchmarks/cache_integrity.py --smoke runs and reports both sides of every A/B (speed is not
    asserted: test machines are shared)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ci.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "cache_integrity.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "smoke" and "load_avg_1min" in r["machine"] and "sweep" not in r
    for part in (r["driver"], r["trial"]["trial"], r["trial"]["reads"]):
        assert part["off_s"] > 0 and part["on_s"] > 0
    assert r["settings"]["entries"] == 16 + 8 + 8 + 8  # train + val + test + retention, tiny-s
    assert [p["size"] for p in r["per_size"]] == ["tiny (64x16x16)", "vit_b (256x64x64)"]
    assert all(isinstance(p["driver_check_ms_per_entry"], float) for p in r["per_size"])
    assert "## 3. Per entry" in proc.stdout
