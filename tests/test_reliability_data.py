"""Issue #18, data side: no empty split reaches training, training never silently returns the
untrained decoder, a pixel limit before decoding, and one-line errors for bad image files/folders."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from specialsam.analysis.baseline_rule import baseline_rule as baseline_rule_report
from specialsam.analysis.results import BaselineResult, TrialResult
from specialsam.analysis.summaries import recommendation
from specialsam.config import default_config_path, load_config
from specialsam.errors import UserError
from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.finetune.train import TrainConfig, train_decoder
from specialsam.models.tiny import build_tiny_sam
from specialsam.report.markdown import write_report
from specialsam.tasks import TASKS, folder, load_task, task_options
from specialsam.tasks import io as tio
from tests.conftest import REPO, run_sweep_cli, scene_task

# ------------------------------------------------------------------------------------ fixtures


def _pair(i: int, h: int = 24, w: int = 32, empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    if not empty:
        mask[4 : 12 + i % 6, 5 : 18 + i % 5] = True
    return image, mask


def _folder_data(root: Path, n: int, empty: tuple[int, ...] = ()) -> list[str]:
    """``root/images`` + ``root/masks`` with ``n`` small pairs (masks of ``empty`` all background)."""
    stems = []
    for i in range(n):
        image, mask = _pair(i, empty=i in empty)
        stem = f"img{i:02d}"
        tio.write_image(root / "images" / f"{stem}.png", image)
        tio.write_mask(root / "masks" / f"{stem}.png", mask)
        stems.append(stem)
    return stems


def _splits_csv(root: Path, rows: dict[str, str]) -> Path:
    path = root / "splits.csv"
    path.write_text("stem,split\n" + "".join(f"{s},{sp}\n" for s, sp in rows.items()))
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 4x4 PNG whose IHDR then claims ``width`` x ``height`` (CRC fixed): a bomb's header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tio.write_mask(path, np.zeros((4, 4), bool))
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg, msg
    return msg


# ------------------------------------------------------------- defect 1: splits (task loaders)


def test_splits_csv_without_val_rows_carves_a_seeded_validation_slice_by_image(tmp_path):
    stems = _folder_data(tmp_path, 10)
    labels = np.zeros((24, 32), np.uint8)  # one image with three instances: they must stay together
    labels[2:10, 2:10], labels[12:22, 14:30], labels[14:22, 2:10] = 1, 2, 3
    for stem in stems[:8]:
        tio.write_image(tmp_path / "masks" / f"{stem}.png", labels)
    csv = _splits_csv(tmp_path, {s: ("train" if i < 8 else "test") for i, s in enumerate(stems)})
    opts = {"split_instances": True}
    d = load_task("folder", tmp_path, opts, seed=3)
    stem_of = lambda samples: {s.key.split("#")[0] for s in samples}  # noqa: E731
    assert d.val and stem_of(d.val) <= set(stems[:8]) and not stem_of(d.val) & stem_of(d.train)
    assert stem_of(d.test) == set(stems[8:])
    assert all(len([s for s in d.val if s.key.startswith(v)]) == 3 for v in stem_of(d.val))
    note = next(n for n in d.notes if "no val rows" in n)
    assert str(csv) in note and "data.val_fraction 0.15" in note and "\n" not in note
    again = load_task("folder", tmp_path, opts, seed=3)
    assert [s.key for s in again.val] == [s.key for s in d.val]  # seeded
    more = load_task("folder", tmp_path, {**opts, "val_fraction": 0.25}, seed=3)
    assert len(stem_of(more.val)) == 2 and len(stem_of(d.val)) == 1


def test_missing_train_or_test_rows_fail_before_any_image_is_decoded(tmp_path):
    stems = _folder_data(tmp_path, 6)
    (tmp_path / "images" / f"{stems[0]}.png").write_bytes(b"not a png")  # never reached
    csv = _splits_csv(tmp_path, dict(zip(stems, ["train"] * 4 + ["val"] * 2, strict=True)))
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    assert f"{csv} has no test rows" in _one_line(e) and "split=test" in str(e.value)
    _splits_csv(tmp_path, dict(zip(stems, ["val"] * 2 + ["test"] * 4, strict=True)))
    with pytest.raises(UserError, match="has no train rows"):
        folder.load(tmp_path, folder.Options(), seed=0)


def test_sweep_on_data_without_test_rows_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    stems = _folder_data(data, 8)
    _splits_csv(data, {s: "train" for s in stems})
    with pytest.raises(SystemExit) as exc:
        run_sweep_cli(["--task", "folder", "--data-root", str(data), "--smoke"], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no test rows" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no mlflow.db, no ray_results


def test_n_train_error_names_only_the_tasks_own_settings(tmp_path, capsys):
    data = tmp_path / "data"
    _folder_data(data, 12)
    # configured sizes are fitted to a small folder (#21); a size asked for on the command line is not
    with pytest.raises(SystemExit):
        run_sweep_cli(
            ["--task", "folder", "--data-root", str(data), "--smoke", "--set", "curve.n_train=[4, 400]"],
            tmp_path,
        )
    line = capsys.readouterr().err.strip()
    assert "curve.n_train asks for 400" in line and "task folder has" in line and "add training data" in line
    assert "n_synthetic" not in line and "\n" not in line


def test_masks_without_foreground_say_why_the_split_is_empty(tmp_path):
    stems = _folder_data(tmp_path, 8, empty=(0, 1, 2, 3))
    _splits_csv(tmp_path, dict(zip(stems, ["train"] * 4 + ["val"] * 2 + ["test"] * 2, strict=True)))
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    msg = _one_line(e)
    assert "no train samples" in msg and "4 masks have no foreground" in msg and "masks" in msg


def test_load_task_refuses_splits_left_empty_by_settings_or_too_few_images(tmp_path):
    _folder_data(tmp_path, 6)
    with pytest.raises(UserError) as e:
        load_task("folder", tmp_path, {"val_fraction": 0.0}, seed=0)
    assert "no val samples" in _one_line(e) and "data.val_fraction" in str(e.value)
    for p in sorted((tmp_path / "images").iterdir())[2:]:
        p.unlink()
    with pytest.raises(UserError, match=r"seeded split of the 2 images .* leaves no val images"):
        load_task("folder", tmp_path, {}, seed=0)


def test_camouflage_test_folder_of_noncam_images_is_an_error(tmp_path):
    root = tmp_path / "COD10K-v3"
    for i in range(4):
        image, mask = _pair(i)
        tio.write_image(root / "Train" / "Image" / f"COD10K-CAM-1-Aquatic-1-Fish-{i}.jpg", image)
        tio.write_mask(root / "Train" / "GT_Object" / f"COD10K-CAM-1-Aquatic-1-Fish-{i}.png", mask)
    (root / "Test" / "GT_Object").mkdir(parents=True)
    for i in range(2):
        tio.write_image(root / "Test" / "Image" / f"COD10K-NonCAM-5-Background-4-Sky-{i}.jpg", _pair(i)[0])
    with pytest.raises(UserError) as e:
        load_task("camouflage", root, {"val_fraction": 0.25}, seed=0)
    msg = _one_line(e)
    assert "no test samples" in msg and "2 NonCAM skipped" in msg and str(root) in msg


def test_wood_counts_of_zero_are_config_errors():
    with pytest.raises(UserError) as e:
        load_config(default_config_path("wood"), ["data.n_val=0"])
    assert "data.n_val" in _one_line(e) and ">= 1" in str(e.value)


# ------------------------------------------------ defect 1: training never returns it silently


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_tiny_sam("tiny-s").eval()
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"))
    ident = model_identity(sam, "tiny-s", "random-init")

    def pack(n_val: int) -> Pack:
        folder_ = build_pack(scene_task(8, n_val, 2), sam, ident, cache, PackSettings(), progress=False)
        return Pack(folder_, cache)

    return {"with_val": pack(2), "no_val": pack(0)}


def _sam():
    torch.manual_seed(0)
    return build_tiny_sam("tiny-s").eval()


def test_training_refuses_an_empty_validation_split(packs):
    with pytest.raises(UserError) as e:
        train_decoder(_sam(), packs["no_val"], TrainConfig(n_train=8, epochs=1, batch_size=4))
    assert "validation split is empty" in _one_line(e) and "untrained" in str(e.value)


def test_a_decoder_training_did_not_change_is_flagged(packs):
    sam = _sam()
    start = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    # a learning rate too small to move fp32 weights: 4 steps, and the decoder is bit-identical
    r = train_decoder(sam, packs["with_val"], TrainConfig(n_train=8, epochs=2, batch_size=4, lr=1e-50))
    assert r.steps == 4 and all(torch.equal(start[k], v) for k, v in r.decoder_state.items())
    assert "unchanged" in r.health and r.health_tag != "ok"
    moved = train_decoder(_sam(), packs["with_val"], TrainConfig(n_train=8, epochs=1, batch_size=4))
    assert "unchanged" not in moved.health


def _unchanged_trials(n_flagged: int) -> tuple[list[BaselineResult], list[TrialResult]]:
    """A model whose trials scored exactly its baseline (decoder unchanged), except the last
    ``3 - n_flagged`` seeds, which gained 0.1."""
    iou = np.random.default_rng(0).uniform(0.3, 0.7, 40)
    trials = [
        TrialResult(
            f"m-{s}", "m", 64, s, {"lr": 1e-3}, {"center": iou + (0.0 if s < n_flagged else 0.1)},
            val_miou=0.5, phase="curve", health="unchanged" if s < n_flagged else "ok",
        )
        for s in range(3)
    ]  # fmt: skip
    return [BaselineResult("m", "center", iou)], trials


def test_report_says_training_changed_nothing_instead_of_dont_fine_tune(tmp_path):
    baselines, trials = _unchanged_trials(3)
    br = baseline_rule_report(baselines, trials, n_boot=200)
    text = recommendation(br, None, data_kind="real")
    assert text.startswith("**No recommendation**") and "did not change the decoder" in text
    assert "Don't fine-tune" not in text and "every one of the 3 trials" in text
    files = write_report(tmp_path, "folder", "real", baselines, trials, n_boot=200, n_boot_curve=50)
    md = files.report_md.read_text()
    assert "| unchanged | 3 |" in md and "3 trials, 3 flagged" in md and "Don't fine-tune" not in md

    baselines, trials = _unchanged_trials(1)  # one seed unchanged: the verdict stands, with a caution
    parts = recommendation(baseline_rule_report(baselines, trials, n_boot=200), None).split("\n\n")
    assert parts[1].startswith("Caution: **Training did not change the decoder** in 1 of the 3 trials")


# ---------------------------------------------------------------- defect 5: the pixel limit


def test_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    _folder_data(tmp_path, 6)
    bomb = _png_claiming(tmp_path / "images" / "img03.png", 30000, 30000)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    assert time.perf_counter() - t0 < 2.0
    msg = _one_line(e)
    assert f"image file {bomb} is 30000x30000 pixels" in msg and "data.max_pixels=100,000,000" in msg
    tio.write_image(bomb, _pair(3)[0])
    mask_bomb = _png_claiming(tmp_path / "masks" / "img04.png", 20000, 20000)
    with pytest.raises(UserError, match=rf"mask file {mask_bomb} is 20000x20000 pixels"):
        folder.load(tmp_path, folder.Options(), seed=0)
    assert tio.read_image(bomb).shape == (24, 32, 3)  # below the limit: read as before
    with pytest.raises(UserError, match="above data.max_pixels=100"):
        tio.read_image(bomb, max_pixels=100)


def _tiny_dataset(task: str, root: Path) -> None:
    image, mask = _pair(0)
    if task == "folder":
        _folder_data(root, 4)
    elif task == "carpet":
        for i in range(2):
            tio.write_image(root / "carpet" / "train" / "good" / f"{i:03d}.png", _pair(i)[0])
        tio.write_image(root / "carpet" / "test" / "cut" / "000.png", image)
        tio.write_mask(root / "carpet" / "ground_truth" / "cut" / "000_mask.png", mask)
    elif task == "coco":
        from tests.test_coco import zerowaste

        zerowaste(root)
    elif task == "camouflage":
        for split in ("Train", "Test"):
            tio.write_image(root / split / "Image" / "COD10K-CAM-1-Aquatic-1-Fish-1.jpg", image)
            tio.write_mask(root / split / "GT_Object" / "COD10K-CAM-1-Aquatic-1-Fish-1.png", mask)
    else:
        for i in range(8):
            tio.write_image(root / "images" / f"wood{i}.png", _pair(i)[0])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_max_pixels_is_a_data_setting_of_every_task_and_reaches_its_reads(task, tmp_path):
    assert task_options(task).max_pixels == tio.DEFAULT_MAX_PIXELS  # one default, everywhere
    with pytest.raises(UserError) as e:
        load_config(default_config_path(task), ["data.max_pixels=0"])
    assert "data.max_pixels" in _one_line(e)
    _tiny_dataset(task, tmp_path)
    extra = {"n_clusters": 2} if task == "wood" else {}
    with pytest.raises(UserError) as e:
        load_task(task, tmp_path, {"max_pixels": 500, **extra}, seed=0)
    assert "file" in _one_line(e) and str(tmp_path) in str(e.value) and "data.max_pixels=500" in str(e.value)


# ---------------------------------------------------- nits: one line for bad files and folders


def _cli(code: str, cwd: Path, as_unprivileged_root: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` inside ``cli_errors`` in a fresh interpreter; with ``as_unprivileged_root`` root
    runs it without the capabilities that let it read any folder (chmod 000 then means it)."""
    prog = (
        "import sys\nfrom specialsam.errors import cli_errors\n"
        f"@cli_errors\ndef main():\n    {code}\nmain()\n"
    )
    cmd = [sys.executable, "-c", prog]
    if as_unprivileged_root:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_truncated_png_prints_only_our_one_line(tmp_path):
    path = tmp_path / "cut.png"
    tio.write_image(path, _pair(0)[0])
    path.write_bytes(path.read_bytes()[:200])
    run = _cli(f"from specialsam.tasks.io import read_image; read_image({str(path)!r})", tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read image file {path}"), lines


def test_images_path_that_is_a_file_is_named_as_such(tmp_path):
    _folder_data(tmp_path, 4)
    shutil.rmtree(tmp_path / "images")
    (tmp_path / "images").write_text("oops")
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    assert f"{tmp_path / 'images'} is a file, not a folder" in _one_line(e)


def test_unlistable_images_folder_is_one_line(tmp_path):
    _folder_data(tmp_path, 4)
    images = tmp_path / "images"
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("root reads a chmod 000 folder anyway, and setpriv is missing to drop that right")
    images.chmod(0)
    try:
        code = f"from specialsam.tasks import folder; from pathlib import Path; folder.load(Path({str(tmp_path)!r}), folder.Options(), 0)"  # noqa: E501
        run = _cli(code, tmp_path, as_unprivileged_root=root)
    finally:
        images.chmod(0o755)
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: cannot list folder {images}: ") and "permissions" in lines[0]
