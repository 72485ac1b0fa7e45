"""Prompts as people give them (#22): extreme points, the click simulator, interactive evaluation
and iterative (corrective-click) training, on hand-made masks and a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.clicks import (
    Click,
    InteractiveScores,
    append_tokens,
    clicks_to_reach,
    depth_bound,
    inner_distance,
    interactive_scores,
    next_click,
    sample_error_clicks,
)
from specialsam.finetune.evaluate import score_split
from specialsam.finetune.pack import Pack, PackSettings, _prompt_arrays, build_pack, model_identity
from specialsam.finetune.train import TrainConfig, _make_batch, train_decoder
from specialsam.models.batched import decode_batched
from specialsam.models.tiny import build_tiny_sam
from specialsam.prompts import EXTREME_JITTER_PX, extreme_points, make_prompt
from specialsam.sweep import mlflow_runs as names
from tests.conftest import scene_task


def fresh_sam():
    torch.manual_seed(0)
    return build_tiny_sam("tiny-s").eval()


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    sam = fresh_sam()
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"))
    settings = PackSettings(strategies=("center", "extreme4"))
    task = scene_task(24, 8, 6)
    folder = build_pack(
        task, sam, model_identity(sam, "tiny-s", "random-init"), cache, settings, progress=False
    )
    return Pack(folder, cache)


# ------------------------------------------------------------------------------ extreme points


def diamond() -> np.ndarray:
    """A plus-shaped mask: top (5, 1), bottom (5, 9), left (1, 5), right (9, 5), one pixel each."""
    m = np.zeros((12, 12), bool)
    m[1:10, 4:7] = True  # vertical bar, x 4..6
    m[4:7, 1:10] = True  # horizontal bar, y 4..6
    return m


def test_extreme_points_are_the_exact_middle_extremes():
    pts = extreme_points(diamond())
    # top row y=1 holds x 4,5,6: the middle one; likewise for every side
    np.testing.assert_array_equal(pts, [[5, 1], [5, 9], [1, 5], [9, 5]])
    p = make_prompt(diamond(), "extreme4", np.random.default_rng(0))
    np.testing.assert_array_equal(p.labels, [1, 1, 1, 1, -1])
    np.testing.assert_array_equal(p.coords[:4], pts)
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    np.testing.assert_array_equal(extreme_points(single), [[3, 2]] * 4)


def test_extreme_points_jitter_is_seeded_and_stays_near_the_extremes():
    m = np.zeros((40, 40), bool)
    m[5:30, 8:35] = True
    a = extreme_points(m, np.random.default_rng(7), EXTREME_JITTER_PX)
    b = extreme_points(m, np.random.default_rng(7), EXTREME_JITTER_PX)
    np.testing.assert_array_equal(a, b)
    assert all(m[int(y), int(x)] for x, y in a)  # always on the object
    assert a[0, 1] - 5 <= EXTREME_JITTER_PX and 29 - a[1, 1] <= EXTREME_JITTER_PX
    assert a[2, 0] - 8 <= EXTREME_JITTER_PX and 34 - a[3, 0] <= EXTREME_JITTER_PX
    draws = {tuple(extreme_points(m, np.random.default_rng(s), EXTREME_JITTER_PX).ravel()) for s in range(5)}
    assert len(draws) > 1  # really jittered


def test_pack_stores_extreme_prompts_and_pads_rows(pack):
    coords, labels, ok = pack.split("test").prompts("extreme4")
    assert labels.shape[1] == 5 and ok.all() and (labels[:, :4] == 1).all()
    # rows are padded to the longest prompt with label -1 tokens (an empty mask: all padding)
    grid = make_prompt(np.ones((8, 8), bool), "grid4", np.random.default_rng(0))
    point = make_prompt(np.ones((8, 8), bool), "center", np.random.default_rng(0))
    c, lab, ok = _prompt_arrays([(grid.coords, grid.labels), (point.coords, point.labels), None])
    assert lab.shape == (3, 5) and list(ok) == [True, True, False]
    assert (lab[1, 1:] == -1).all() and (lab[2] == -1).all()  # padded rows, and an empty mask's


# ------------------------------------------------------------------------------ click simulator


def two_errors(big_fn: bool) -> tuple[np.ndarray, np.ndarray]:
    """gt/pred with a 9x9 and a 3x3 error square: the 9x9 one is a false negative or a false positive."""
    gt = np.zeros((30, 30), bool)
    pred = np.zeros((30, 30), bool)
    big = (slice(3, 12), slice(14, 23))  # centre (x 18, y 7)
    small = (slice(20, 23), slice(4, 7))  # centre (x 5, y 21)
    (gt if big_fn else pred)[big] = True
    (pred if big_fn else gt)[small] = True
    return pred, gt


def test_first_click_goes_to_the_centre_of_the_larger_error_with_its_label():
    pred, gt = two_errors(big_fn=True)
    assert next_click(pred, gt) == Click(18, 7, positive=True)
    pred, gt = two_errors(big_fn=False)
    assert next_click(pred, gt) == Click(18, 7, positive=False)
    # the small region wins once the big one is fixed; a clicked pixel is never clicked again
    pred, gt = two_errors(big_fn=True)
    pred[3:12, 14:23] = True
    assert next_click(pred, gt) == Click(5, 21, positive=False)
    clicked = np.zeros_like(gt)
    clicked[21, 5] = True
    assert next_click(pred, gt, clicked) != Click(5, 21, positive=False)
    assert next_click(gt, gt) is None


def ritm_click(pred, gt, clicked):
    """RITM's clicker as written there: both transforms, the deeper error wins."""
    fn, fp = gt & ~pred, pred & ~gt
    d_fn, d_fp = (np.where(clicked, 0, inner_distance(r)) for r in (fn, fp))
    if d_fn.max() == 0 and d_fp.max() == 0:
        return None
    positive = bool(d_fn.max() > d_fp.max())
    d = d_fn if positive else d_fp
    y, x = np.argwhere(d == d.max())[0]
    return Click(int(x), int(y), positive)


def test_skipping_the_shallow_transform_never_changes_the_click():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    for _ in range(150):
        gt, pred = (
            ((xx - cx) ** 2 / ax + (yy - cy) ** 2 / ay) < 1
            for cx, cy, ax, ay in rng.uniform([0, 0, 4, 4], [48, 40, 300, 300], (2, 4))
        )
        clicked = rng.random(gt.shape) < 0.01
        assert next_click(pred, gt, clicked) == ritm_click(pred, gt, clicked)
        assert depth_bound(gt) >= inner_distance(gt).max()


def test_image_border_counts_as_boundary():
    gt = np.zeros((10, 20), bool)
    gt[:, :7] = True  # a false negative touching three image borders: the first deepest pixel is x 3, y 3
    assert next_click(np.zeros_like(gt), gt) == Click(3, 3, positive=True)


def test_noc_counts_the_first_click_reaching_the_threshold_else_the_cap():
    curve = np.array([[0.5, 0.86, 0.91, 0.95], [0.92, 0.8, 0.9, 0.9], [0.1, 0.2, 0.3, 0.84]])
    np.testing.assert_array_equal(clicks_to_reach(curve, 0.85, 4), [2, 1, 4])
    np.testing.assert_array_equal(clicks_to_reach(curve, 0.90, 4), [3, 1, 4])
    np.testing.assert_array_equal(clicks_to_reach(curve, 0.90, 2), [2, 1, 2])  # reached too late


def test_clicks_keep_sams_token_layout():
    coords = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 4.0], [5.0, 6.0]]])
    labels = torch.tensor([[1, -1], [2, 3]])
    c, lab = append_tokens(coords, labels, torch.tensor([[7.0, 8.0], [9.0, 9.0]]), torch.tensor([0, 1]))
    np.testing.assert_array_equal(lab, [[1, 0, -1], [2, 3, 1]])
    np.testing.assert_array_equal(c[0], [[1, 2], [7, 8], [0, 0]])
    np.testing.assert_array_equal(c[1], [[3, 4], [5, 6], [9, 9]])


# ------------------------------------------------------------------------------ mask prompt


def test_mask_prompt_matches_sams_prompt_encoder_and_changes_the_prediction():
    sam = fresh_sam()
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    emb = torch.randn(2, 64, 16, 16)
    coords = torch.tensor([[[40.0, 60.0], [0.0, 0.0]]] * 2)
    labels = torch.tensor([[1, -1]] * 2)
    low = torch.randn(2, 1, 64, 64) * 5
    sparse, dense = pe(points=(coords[:, :1], labels[:, :1]), boxes=None, masks=low)  # SAM adds the pad
    ref, _ = dec.predict_masks(emb[:1], pe.get_dense_pe(), sparse[:1], dense[:1])
    with_mask, _ = decode_batched(dec, pe, emb, coords, labels, mask_input=low)
    without, _ = decode_batched(dec, pe, emb, coords, labels)
    assert torch.allclose(with_mask[:1], ref, atol=1e-5)  # SAM's own mask-prompt path
    assert (with_mask - without).abs().max() > 1e-2  # the mask prompt is really used
    mixed, _ = decode_batched(dec, pe, emb, coords, labels, low, torch.tensor([True, False]))
    assert torch.allclose(mixed[0], with_mask[0], atol=1e-6) and torch.allclose(
        mixed[1], without[1], atol=1e-6
    )


# ------------------------------------------------------------------------------ interactive evaluation


def test_interactive_scores_start_at_plain_scores_and_are_deterministic(pack):
    sam = pack.headless_model()
    test = pack.split("test")
    for strat in ("center", "extreme4"):
        a = interactive_scores(sam, test, strat, clicks=(1, 2, 5), thresholds=(0.85, 0.9), max_clicks=6)
        plain = score_split(sam, test, [strat])[strat]
        np.testing.assert_allclose(a.iou[:, 0], plain.per_image_iou)  # click 1 is today's score
        b = interactive_scores(sam, test, strat, clicks=(1, 2, 5), thresholds=(0.85, 0.9), max_clicks=6)
        np.testing.assert_array_equal(a.iou, b.iou)
        for t, noc in a.noc.items():
            assert ((noc >= 1) & (noc <= 6)).all()
            np.testing.assert_array_equal(b.noc[t], noc)
        assert set(names.interactive_metrics(a)) == {
            "clicks_miou.1",
            "clicks_miou.2",
            "clicks_miou.5",
            "noc.85",
            "noc.90",
        }
        again = InteractiveScores.from_dict(json.loads(json.dumps(a.to_dict())))
        assert np.array_equal(again.iou, a.iou) and all(np.array_equal(again.noc[t], a.noc[t]) for t in a.noc)
    # corrective clicks change the masks, and so does feeding back the logits as mask prompt
    assert not np.array_equal(a.iou[:, 0], a.iou[:, 2])
    points_only = interactive_scores(sam, test, "extreme4", clicks=(1, 2, 5), max_clicks=6, feed_logits=False)
    np.testing.assert_array_equal(points_only.iou[:, 0], a.iou[:, 0])
    assert not np.array_equal(points_only.iou[:, 1], a.iou[:, 1])


# ------------------------------------------------------------------------------ training


def test_training_clicks_land_in_the_error_region_with_its_label():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    pred = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, 2, 5] = True  # one false negative at (x 5, y 2)
    pred[1, 6, 1] = True  # one false positive at (x 1, y 6)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    xy, lab = sample_error_clicks(pred, target, valid, torch.tensor([0.3, 0.99]))
    np.testing.assert_array_equal(xy, [[5, 2], [1, 6]])
    np.testing.assert_array_equal(lab, [1, 0])
    xy, lab = sample_error_clicks(target, target, valid, torch.tensor([0.5, 0.5]))
    np.testing.assert_array_equal(lab, [-1, -1])  # no error: a padding token


def test_click_rounds_zero_is_todays_training(pack):
    """Golden values from train_decoder at commit 6b7b457 (before click rounds), same inputs: the
    weights were compared bit for bit then; here the losses, mIoUs and weight sum."""
    r = train_decoder(fresh_sam(), pack, TrainConfig(epochs=2, batch_size=8, seed=3, n_train=24))
    got = [(h["train_loss"], h["val_miou"]) for h in r.history]
    ref = [(0.7133830984433492, 0.032763809449895695), (0.7103652358055115, 0.015062376339653717)]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    total = sum(v.double().abs().sum().item() for v in r.decoder_state.values())
    assert total == pytest.approx(11957.217299204643, rel=1e-7)
    batch = _make_batch(pack.split("train"), [0, 1], np.random.default_rng(0), TrainConfig(), 64, 256)
    assert batch.clicks is None


def test_click_rounds_train_deterministically_and_differently(pack):
    cfg = dict(epochs=1, batch_size=8, seed=3, n_train=24, click_rounds=2)
    a = train_decoder(fresh_sam(), pack, TrainConfig(**cfg))
    b = train_decoder(fresh_sam(), pack, TrainConfig(**cfg, micro_batch=3))
    c = train_decoder(fresh_sam(), pack, TrainConfig(**{**cfg, "click_rounds": 0}))
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)
    for k, v in a.decoder_state.items():  # chunking does not change the rounds' draws
        assert torch.allclose(v, b.decoder_state[k], atol=1e-5)
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]
    with pytest.raises(Exception, match="click_rounds"):
        TrainConfig(click_rounds=1.5).validate()


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "text, key",
    [
        ("eval: {clicks: [0, 2]}", "eval.clicks[0]"),
        ("eval: {clicks: [3, 1]}", "eval.clicks"),
        ("eval: {noc_thresholds: [0.85, 1.5]}", "eval.noc_thresholds[1]"),
        ("eval: {max_clicks: 0}", "eval.max_clicks"),
        ("train: {click_rounds: -1}", "train.click_rounds"),
        ("search: {space: {click_rounds: {type: uniform, low: 0, high: 4}}}", "click_rounds"),
        ("search: {space: {click_rounds: [0, 1.5]}}", "click_rounds.values[1]"),
    ],
)
def test_click_settings_are_checked(tmp_path, text, key):
    from specialsam.config import load_config
    from specialsam.errors import UserError

    p = tmp_path / "sweep.yaml"
    p.write_text(f"task: carpet\n{text}\n")
    with pytest.raises(UserError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(p)


def test_click_settings_reach_the_trial_config(tmp_path):
    from specialsam.config import load_config

    p = tmp_path / "sweep.yaml"
    p.write_text("task: carpet\ntrain: {click_rounds: 3}\neval: {clicks: [1, 4], max_clicks: 10}\n")
    cfg = load_config(p)
    assert (cfg.eval.clicks, cfg.eval.noc_thresholds, cfg.eval.max_clicks) == ([1, 4], [0.85, 0.9], 10)
    assert cfg.train_config(cfg.base_params(), 8, 0).click_rounds == 3
    searched = cfg.train_config({**cfg.base_params(), "click_rounds": 2.0}, 8, 0)
    searched.validate()
    assert searched.click_rounds == 2 and isinstance(searched.click_rounds, int)


def test_extreme_points_reach_training_as_jittered_prompts_padded_beside_points_and_boxes():
    """``train.extreme_fraction``: extreme4's training form (jittered by up to EXTREME_JITTER_PX, on
    the mask), stacked with 2-token point/box prompts by padding; 0 draws nothing extra."""
    from specialsam.prompts import stack_prompts, training_prompt

    mask = np.zeros((64, 64), bool)
    mask[10:50, 20:40] = True
    rng = np.random.default_rng(0)
    drawn = [training_prompt(mask, rng, 0.5, extreme_fraction=0.5) for _ in range(40)]
    four = [p for p in drawn if len(p.labels) == 5]
    assert 5 < len(four) < 35 and all(mask[int(y), int(x)] for p in four for x, y in p.coords[:4])
    exact = extreme_points(mask, np.random.default_rng(0), 0)
    axis = [1, 1, 0, 0]  # top/bottom: y is the extreme coordinate; left/right: x
    off = np.array([[abs(p.coords[j, a] - exact[j, a]) for j, a in enumerate(axis)] for p in four])
    assert off.max() <= EXTREME_JITTER_PX and off.max() > 0  # jittered, within DEXTR's 5 px
    coords, labels = stack_prompts(drawn)
    assert coords.shape == (40, 5, 2) and (labels[[len(p.labels) == 2 for p in drawn], 2:] == -1).all()
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    plain = [training_prompt(mask, a, 0.5) for _ in range(10)]
    zero = [training_prompt(mask, b, 0.5, extreme_fraction=0.0) for _ in range(10)]
    assert all(np.array_equal(p.coords, q.coords) for p, q in zip(plain, zero, strict=True))
