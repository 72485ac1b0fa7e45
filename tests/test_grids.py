"""Training-size grids derived from the pool, and one encoder pass per image for instance data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from specialsam.config import default_config_path, load_config
from specialsam.config.grids import fit_n_train, pool_grid, set_keys
from specialsam.errors import UserError
from specialsam.tasks import load_task, n_train_remedy
from specialsam.tasks.io import write_image, write_mask


def _folder(root: Path, n: int) -> Path:
    for i in range(n):
        rng = np.random.default_rng(i)
        mask = np.zeros((32, 40), bool)
        mask[4 : 12 + i % 10, 6:20] = True
        write_image(root / "images" / f"img{i:03d}.png", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
        write_mask(root / "masks" / f"img{i:03d}.png", mask)
    return root


def test_pool_grid_doubles_up_to_the_pool():
    assert pool_grid(272, 6) == [8, 17, 34, 68, 136, 272]
    assert pool_grid(272, 4) == [34, 68, 136, 272]
    assert pool_grid(28, 2) == [14, 28]
    assert pool_grid(150, 6) == [9, 18, 37, 75, 150]  # nothing below 8 samples
    assert pool_grid(12, 6) == [12]
    assert pool_grid(3, 6) == [3]  # a pool smaller than that is its own grid


def test_configured_sizes_over_the_pool_are_derived_with_a_note():
    cfg = load_config(default_config_path("folder"), ["data_root=/x"])
    assert max(cfg.curve.n_train) == 2000 and cfg.search.n_train == 200
    fitted, note = fit_n_train(cfg, 272, set_keys(["data_root=/x"]))
    assert fitted.curve.n_train == [8, 17, 34, 68, 136, 272] and fitted.search.n_train == 200
    assert "272 samples" in note and "curve.n_train 2000" in note and "\n" not in note
    assert cfg.curve.n_train[-1] == 2000  # the loaded config is left as it was
    same, none = fit_n_train(cfg, 5000)
    assert same is cfg and none is None


def test_an_explicit_set_over_the_pool_still_errors():
    overrides = ["curve.n_train=[100, 400]"]
    cfg = load_config(default_config_path("folder"), overrides)
    with pytest.raises(UserError, match=r"--set curve.n_train asks for 400 .* has 272 .* at most 272"):
        fit_n_train(cfg, 272, set_keys(overrides))
    group = ["search={n_train: 300, num_samples: 2}"]
    cfg = load_config(default_config_path("folder"), group)
    with pytest.raises(UserError, match="search.n_train asks for 300"):
        fit_n_train(cfg, 272, set_keys(group))


def test_generated_pools_keep_their_own_check():
    cfg = load_config(default_config_path("carpet"))
    fitted, note = fit_n_train(cfg, 100)
    assert fitted is cfg and note is None
    assert "n_synthetic" in n_train_remedy("carpet")


def test_smoke_on_a_40_image_folder_fits(tmp_path):
    root = _folder(tmp_path / "data", 40)
    overrides = [f"data_root={root}"]
    cfg = load_config(default_config_path("folder"), overrides, smoke=True)
    task = load_task("folder", cfg.data_root, cfg.data, cfg.seed)
    assert len(task.train) < cfg.max_n_train()  # what used to fail
    fitted, note = fit_n_train(cfg, len(task.train), set_keys(overrides))
    assert fitted.curve.n_train == [len(task.train) // 2, len(task.train)] and note
    task.keep_first_train(fitted.max_n_train(), "n_train", "unused")  # the sweep's own check passes
    assert len(task.train) == fitted.max_n_train()


def test_coco_stand_in_pool_fits_its_default_curve():
    cfg = load_config(default_config_path("coco"))
    task = load_task("coco", None, cfg.data, cfg.seed)
    fitted, note = fit_n_train(cfg, len(task.train))
    assert fitted is cfg and note is None


def test_one_encoder_pass_per_image_when_images_have_several_instances(tmp_path):
    """Instances of one image share one cache entry: the pack build encodes each image once."""
    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.pack import PackSettings, build_pack, model_identity
    from specialsam.models.tiny import build_tiny_sam
    from tests.test_coco import zerowaste

    zerowaste(tmp_path / "zw")
    task = load_task("coco", tmp_path / "zw")
    n_images = {x: len({s.image_id for s in getattr(task, x)}) for x in ("train", "val", "test")}
    assert len(task.train) == 3 * n_images["train"]  # three instances per image
    torch.manual_seed(0)
    sam = build_tiny_sam("tiny-s").eval()
    cache = EmbeddingCache(tmp_path / "cache")
    ident = model_identity(sam, "tiny-s", "random-init")
    settings = PackSettings(flip=True, strategies=("center", "box"))
    build_pack(task, sam, ident, cache, settings, progress=False)
    # train images and their flips, val and test images: once each, not once per instance
    assert cache.encoder_calls == 2 * n_images["train"] + n_images["val"] + n_images["test"]
    build_pack(task, sam, ident, cache, settings, progress=False)
    assert cache.encoder_calls == 2 * n_images["train"] + n_images["val"] + n_images["test"]


def test_the_sweep_command_fits_a_40_image_folder_and_refuses_an_explicit_size(tmp_path):
    """Through ``sweeps/run.py`` (``--plan``: the whole input path, nothing run): configured sizes
    are fitted with one note line; an explicit ``--set`` size over the pool is one line, exit 2."""
    import subprocess
    import sys

    root = _folder(tmp_path / "data", 40)
    repo = Path(__file__).resolve().parent.parent
    base = [sys.executable, str(repo / "sweeps" / "run.py"), "--task", "folder", "--data-root", str(root)]
    env_cwd = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 300}
    ok = subprocess.run([*base, "--smoke", "--plan"], **env_cwd)
    assert ok.returncode == 0, ok.stderr[-2000:]
    notes = [ln for ln in ok.stdout.splitlines() if "fewer than the configured" in ln]
    assert len(notes) == 1 and "curve.n_train" in notes[0]
    bad = subprocess.run([*base, "--plan", "--set", "curve.n_train=[16, 400]"], **env_cwd)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "asks for 400" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
