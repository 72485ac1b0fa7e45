"""The embedding cache: hits run the encoder zero times; changes are recomputed, never stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from specialsam.finetune.cache import EmbeddingCache, ModelIdentity, preprocessing_id
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.models.tiny import build_tiny_sam
from tests.conftest import scene_task


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_tiny_sam("tiny-s").eval()


def _images(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8) for i in range(n)]


def _hashes(images):
    import hashlib

    return [hashlib.sha256(im.tobytes() + str(im.shape).encode()).hexdigest() for im in images]


def test_hit_miss_and_stale(tmp_path, sam):
    cache = EmbeddingCache(tmp_path)
    ident = ModelIdentity("tiny-s", "sha-a", preprocessing_id(sam))
    imgs = _images()
    keys = cache.precompute(sam, ident, imgs, _hashes(imgs), progress=False)
    assert cache.encoder_calls == 5
    emb = cache.load(keys[0])
    assert emb.dtype == np.float16 and emb.shape == (64, 16, 16)

    again = EmbeddingCache(tmp_path)
    assert again.precompute(sam, ident, imgs, _hashes(imgs), progress=False) == keys
    assert again.encoder_calls == 0  # everything served from disk

    imgs[2] = imgs[2].copy()
    imgs[2][0, 0, 0] ^= 1  # a one-pixel change must not be served stale
    again.precompute(sam, ident, imgs, _hashes(imgs), progress=False)
    assert again.encoder_calls == 1

    other_ckpt = ModelIdentity("tiny-s", "sha-b", preprocessing_id(sam))
    again.precompute(sam, other_ckpt, imgs, _hashes(imgs), progress=False)
    assert again.encoder_calls == 1 + 5  # a changed checkpoint recomputes everything


def test_encoder_precision_is_part_of_the_key_and_recorded(tmp_path, sam):
    """A bf16-encoded entry never serves an fp32 request (or back); fp32 keys are the old ones."""
    from specialsam.finetune.cache import entry_key
    from specialsam.models.inference import encode

    imgs = _images(3)
    hashes = _hashes(imgs)
    fp32 = ModelIdentity("tiny-s", "sha", preprocessing_id(sam))
    bf16 = ModelIdentity("tiny-s", "sha", preprocessing_id(sam), precision="bf16")
    assert fp32.key(hashes[0]) == entry_key("tiny-s", "sha", hashes[0], preprocessing_id(sam))
    assert bf16.key(hashes[0]) != fp32.key(hashes[0])
    assert "precision" not in fp32.record()  # packs of fp32 models keep their old hashes
    assert bf16.record()["precision"] == "bf16"

    cache = EmbeddingCache(tmp_path)
    k32 = cache.precompute(sam, fp32, imgs, hashes, progress=False)
    k16 = cache.precompute(sam, bf16, imgs, hashes, progress=False)
    assert cache.encoder_calls == 6  # nothing shared between the precisions
    meta = json.loads(cache._paths(k16[0])[1].read_text())
    assert meta["precision"] == "bf16"
    a, b = cache.load(k32[0]).astype(np.float32), cache.load(k16[0]).astype(np.float32)
    direct = encode(sam, imgs[:1], precision="bf16")[0].numpy()
    assert np.abs(b - direct).max() < 1e-2 * (np.abs(direct).max() + 1)  # encoded in bf16, stored fp16
    assert not np.array_equal(a, b)  # really a different computation
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)  # ... of the same embedding
    with pytest.raises(ValueError, match="precision"):
        encode(sam, imgs[:1], precision="fp8")


def test_embedding_matches_direct_encoder_within_fp16(tmp_path, sam):
    from specialsam.models.inference import encode

    cache = EmbeddingCache(tmp_path)
    imgs = _images(2)
    keys = cache.precompute(
        sam, ModelIdentity("tiny-s", "x", preprocessing_id(sam)), imgs, _hashes(imgs), progress=False
    )
    direct = encode(sam, imgs).numpy()
    np.testing.assert_allclose(cache.load(keys[1]).astype(np.float32), direct[1], rtol=2e-3, atol=2e-3)


def test_truncated_entry_is_recomputed_not_read(tmp_path, sam):
    cache = EmbeddingCache(tmp_path)
    ident = ModelIdentity("tiny-s", "sha", preprocessing_id(sam))
    imgs = _images(3)
    keys = cache.precompute(sam, ident, imgs, _hashes(imgs), progress=False)
    arr_path = next((tmp_path / "embeddings").rglob(f"{keys[1]}.npy"))
    arr_path.write_bytes(arr_path.read_bytes()[:100])  # a torn write
    assert not cache.has(keys[1], verify=True)
    cache.precompute(sam, ident, imgs, _hashes(imgs), verify=True, progress=False)
    assert cache.encoder_calls == 3 + 1
    assert cache.has(keys[1], verify=True)
    meta = json.loads(arr_path.with_suffix(".json").read_text())
    assert meta["image_hash"] == _hashes(imgs)[1] and meta["model"] == "tiny-s"


def test_entry_without_sidecar_counts_as_missing(tmp_path, sam):
    cache = EmbeddingCache(tmp_path)
    ident = ModelIdentity("tiny-s", "sha", preprocessing_id(sam))
    imgs = _images(1)
    (key,) = cache.precompute(sam, ident, imgs, _hashes(imgs), progress=False)
    next((tmp_path / "embeddings").rglob(f"{key}.json")).unlink()  # interrupted before the sidecar
    assert not cache.has(key)
    assert not list((tmp_path / "embeddings").rglob("*.tmp"))


def test_pack_is_reused_and_holds_what_trials_need(tmp_path, sam):
    task = scene_task(n_train=6, n_val=3, n_test=3)
    cache = EmbeddingCache(tmp_path)
    settings = PackSettings(flip=True, strategies=("center", "box", "random3"))
    ident = model_identity(sam, "tiny-s", "random-init")
    folder = build_pack(task, sam, ident, cache, settings, progress=False)
    assert cache.encoder_calls == 6 * 2 + 3 + 3  # flips are separate encoder passes
    assert build_pack(task, sam, ident, cache, settings, progress=False) == folder
    assert cache.encoder_calls == 18  # second build: nothing encoded
    pack = Pack(folder, cache)
    assert pack.train_indices(2) == [0, 1, 6, 7]  # a sample and its flip stay together
    tr = pack.split("train")
    assert tr.masks.shape == (12, 256, 256)
    # the flipped copy's mask is the mirror image
    np.testing.assert_array_equal(np.asarray(tr.masks[6]), np.asarray(tr.masks[0])[:, ::-1])
    test = pack.split("test")
    coords, labels, ok = test.prompts("random3")
    assert coords.shape == (3, 4, 2) and ok.all() and (labels[:, -1] == -1).all()
    np.testing.assert_array_equal(test.gt(1), task.test[1].mask)
    assert test.embeddings([0, 2]).shape == (2, 64, 16, 16)


def test_mask_rows_read_exactly_what_numpy_saved(tmp_path):
    """Packs read mask rows from disk on demand (no memory map: RSS must not grow with the pool)."""
    from specialsam.finetune.pack import MaskRows

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "m.npy", arr)
    rows = MaskRows(tmp_path / "m.npy")
    assert len(rows) == 7 and rows.shape == arr.shape
    for i in (0, 3, 6, -1):
        np.testing.assert_array_equal(rows[i], arr[i])
    with pytest.raises(IndexError):
        rows[7]


@pytest.mark.parametrize("env", ["", "1"])
def test_progress_bar_respects_tqdm_disable(tmp_path, env):
    """The encoding bar shows by default and yields to the user's TQDM_DISABLE (quiet logs). tqdm
    reads TQDM_* when it is imported, hence a fresh process."""
    code = textwrap.dedent(f"""
        import numpy as np
        from specialsam.finetune.cache import EmbeddingCache, ModelIdentity, preprocessing_id
        from specialsam.models.tiny import build_tiny_sam
        sam = build_tiny_sam("tiny-s").eval()
        ident = ModelIdentity("tiny-s", "x", preprocessing_id(sam))
        EmbeddingCache({str(tmp_path)!r}).precompute(sam, ident, [np.zeros((32, 32, 3), np.uint8)], ["h0"])
    """)
    env_vars = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | (
        {"TQDM_DISABLE": env} if env else {}
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_vars, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert ("encoding" in run.stderr) == (not env)
