"""Metrics: hand-computed cases, and agreement with the reference implementation py_sod_metrics.

py_sod_metrics conventions that matter here: ``step(pred, gt)`` with ``normalize=True`` expects
uint8 0..255 and min-max rescales the prediction (MATLAB's mapminmax), so float predictions are
passed with ``normalize=False`` (float64 in [0, 1], bool GT); its E-measure divides by H*W-1
(ours by H*W) and its "adp" variant binarises at 2*mean(pred), which on a non-empty binary map is
the map itself.
"""

from __future__ import annotations

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest

from specialsam.finetune import metrics as m

# ----------------------------------------------------------------------------- fixtures


def _square(shape: tuple[int, int], y0: int, x0: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def _disc(shape: tuple[int, int], cx: int, cy: int, r: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    return mask.astype(bool)


def _soft(mask: np.ndarray, shift: int, seed: int) -> np.ndarray:
    """A plausible probability map: the mask shifted, blurred and sprinkled with noise."""
    rng = np.random.default_rng(seed)
    p = cv2.GaussianBlur(np.roll(mask.astype(np.float64), shift, axis=1), (9, 9), 3)
    return np.clip(p + rng.uniform(-0.05, 0.15, p.shape), 0.0, 1.0)


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, GT, soft prediction): single object, two objects, object cut by the frame, thin."""
    shape = (48, 64)
    disc = _disc(shape, 30, 22, 11)
    two = _disc(shape, 14, 14, 7) | _square(shape, 26, 36, 14)
    frame = _square(shape, 20, 44, 30)[:48, :64]
    thin = np.zeros(shape, bool)
    thin[10:40, 30:32] = True
    return [
        ("disc", disc, _soft(disc, 3, 0)),
        ("two_objects", two, _soft(two, -2, 1)),
        ("cut_by_frame", frame, _soft(frame, -4, 2)),
        ("thin", thin, _soft(thin, 1, 3)),
    ]


CASES = _cases()
CASE_IDS = [c[0] for c in CASES]


def _ref(metric: object, pred: np.ndarray, gt: np.ndarray, normalize: bool = False) -> dict:
    metric.step(pred, gt, normalize=normalize)
    return metric.get_results()


# ----------------------------------------------------------------------------- IoU / Dice


def test_iou_dice_hand_computed_overlap():
    pred = _square((10, 10), 0, 0, 4)  # 16 px
    gt = _square((10, 10), 2, 2, 4)  # 16 px, overlap 2x2 = 4, union 28
    assert m.iou(pred, gt) == pytest.approx(4 / 28)
    assert m.dice(pred, gt) == pytest.approx(8 / 32)


def test_iou_dice_identical_disjoint_and_empty():
    a, b = _square((20, 20), 0, 0, 5), _square((20, 20), 10, 10, 5)
    empty = np.zeros((20, 20), bool)
    assert m.iou(a, a) == m.dice(a, a) == 1.0
    assert m.iou(a, b) == m.dice(a, b) == 0.0
    assert m.iou(empty, empty) == m.dice(empty, empty) == 1.0  # project convention
    assert m.iou(empty, a) == m.dice(a, empty) == 0.0


@pytest.mark.parametrize("name,gt,soft", CASES, ids=CASE_IDS)
def test_iou_dice_match_reference_binary_mode(name, gt, soft):
    ref = _ref(
        sod.FmeasureV2(
            {
                "iou": sod.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
                "dice": sod.DICEHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            }
        ),
        soft,
        gt,
    )
    ours = m.all_metrics(soft, gt)  # the reference's binary mode is also pred > 0.5
    assert ours["iou"] == pytest.approx(ref["iou"]["binary"], abs=1e-12)
    assert ours["dice"] == pytest.approx(ref["dice"]["binary"], abs=1e-12)


# ----------------------------------------------------------------------------- MAE


def test_mae_hand_computed():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    assert m.mae(np.full((4, 4), 0.25), gt) == pytest.approx((8 * 0.75 + 8 * 0.25) / 16)
    assert m.mae(gt, gt) == 0.0
    assert m.mae(~gt, gt) == 1.0


def test_prediction_is_not_min_max_rescaled():
    """The reference's normalize=True would stretch 0.1..0.3 to 0..1; a probability is kept."""
    gt = np.zeros((8, 8), bool)
    pred = np.linspace(0.1, 0.3, 64).reshape(8, 8)
    assert m.mae(pred, gt) == pytest.approx(0.2)
    stretched = _ref(sod.MAE(), np.round(pred * 255).astype(np.uint8), np.zeros((8, 8), np.uint8), True)
    assert stretched["mae"] == pytest.approx(0.5, abs=0.01)  # what we deliberately avoid


# ----------------------------------------------------------------------------- boundary F1


def test_boundary_tolerance_default():
    assert m.default_boundary_tolerance((256, 256)) == 3  # 0.0075 * 362 = 2.7
    assert m.default_boundary_tolerance((1024, 1024)) == 11  # 0.0075 * 1448 = 10.9
    assert m.default_boundary_tolerance((480, 640)) == 6  # 0.0075 * 800 = 6.0
    assert m.default_boundary_tolerance((32, 32)) == 1  # 0.34 rounds to 0: floored at 1 px


def test_boundary_f1_shifted_square_hand_computed():
    """20x20 square shifted 3 px right; each contour has 76 pixels. GT's top/bottom rows are at
    distance 0 from the other contour over 17 columns and 1, 2, 3 px beyond; its right side
    (column 39) is 1, 2, ... px from the other's top/bottom rows near the corners and 3 px from its
    side; its left side is 3 px away. So 34 + 4 * tol pixels match below 3 px, all at 3 px.
    Symmetric, so F1 = precision = recall."""
    gt = _square((64, 64), 20, 20, 20)
    pred = _square((64, 64), 20, 23, 20)
    for tol in (0, 1, 2):
        assert m.boundary_f1(pred, gt, tolerance=tol) == pytest.approx((34 + 4 * tol) / 76), tol
    assert m.boundary_f1(pred, gt, tolerance=3) == 1.0
    assert m.boundary_f1(pred, gt) == pytest.approx(38 / 76)  # 64x64: default tolerance is 1 px
    assert m.boundary_f1(gt, gt) == 1.0


def test_boundary_f1_disjoint_empty_and_full():
    a, b = _square((64, 64), 2, 2, 10), _square((64, 64), 40, 40, 10)
    empty, full = np.zeros((64, 64), bool), np.ones((64, 64), bool)
    assert m.boundary_f1(a, b) == 0.0
    assert m.boundary_f1(empty, a) == 0.0
    assert m.boundary_f1(empty, empty) == 1.0
    assert m.boundary_f1(full, full) == 1.0
    assert m.boundary_f1(full, a) == 0.0


def test_boundary_ignores_image_frame():
    left = np.zeros((20, 20), bool)
    left[:, :10] = True
    expected = np.zeros((20, 20), bool)
    expected[:, 9] = True  # only the drawn contour, not the frame along rows 0/19 and column 0
    np.testing.assert_array_equal(m.boundary_map(left), expected)


def test_boundary_f1_binarises_soft_prediction():
    gt = _square((64, 64), 20, 20, 20)
    soft = np.where(_square((64, 64), 20, 23, 20), 0.7, 0.2)
    assert m.boundary_f1(soft, gt, tolerance=1) == pytest.approx(38 / 76)


def test_boundary_f1_precision_and_recall_differ():
    """An extra far-away blob costs precision only: F1 = 2P/(P+1) with P = 76/(76+36)."""
    gt = _square((64, 64), 5, 5, 20)
    pred = gt | _square((64, 64), 50, 50, 10)
    p = 76 / (76 + 36)
    assert m.boundary_f1(pred, gt, tolerance=2) == pytest.approx(2 * p / (p + 1))


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("name,gt,soft", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("binary", [False, True], ids=["soft", "binary"])
def test_sod_metrics_match_reference(name, gt, soft, binary):
    pred = (soft > 0.5).astype(np.float64) if binary else soft
    ours = m.all_metrics(pred, gt)
    assert ours["mae"] == pytest.approx(_ref(sod.MAE(), pred, gt)["mae"], abs=1e-12)
    assert ours["s_alpha"] == pytest.approx(_ref(sod.Smeasure(), pred, gt)["sm"], abs=1e-10)
    assert ours["wf_beta"] == pytest.approx(_ref(sod.WeightedFmeasure(), pred, gt)["wfm"], abs=1e-6)


@pytest.mark.parametrize("name,gt,soft", CASES, ids=CASE_IDS)
def test_e_phi_is_reference_adaptive_e_measure_of_the_binary_mask(name, gt, soft):
    binary = soft > 0.5
    n = gt.size
    ref = _ref(sod.Emeasure(), binary.astype(np.float64), gt)["em"]["adp"]
    assert m.e_phi(binary, gt) == pytest.approx(ref * (n - 1) / n, abs=1e-12)  # H*W vs H*W-1
    assert m.e_phi(soft, gt) == m.e_phi(binary, gt)  # a soft prediction is binarised at 0.5


def test_reference_uint8_convention_on_binary_masks():
    """Through the reference's own uint8 path (0/255, GT > 128) a binary mask gives the same."""
    name, gt, soft = CASES[0]
    pred = soft > 0.5
    pred8, gt8 = pred.astype(np.uint8) * 255, gt.astype(np.uint8) * 255
    ours = m.all_metrics(pred, gt)
    assert ours["s_alpha"] == pytest.approx(_ref(sod.Smeasure(), pred8, gt8, True)["sm"], abs=1e-10)
    assert ours["wf_beta"] == pytest.approx(_ref(sod.WeightedFmeasure(), pred8, gt8, True)["wfm"], abs=1e-6)
    assert ours["mae"] == pytest.approx(_ref(sod.MAE(), pred8, gt8, True)["mae"], abs=1e-12)


def test_wf_beta_matches_reference_when_gt_touches_everything():
    full = np.ones((16, 16), bool)
    pred = _square((16, 16), 4, 4, 6)
    assert m.wf_beta(pred, full) == pytest.approx(_ref(sod.WeightedFmeasure(), pred * 1.0, full)["wfm"])
    assert m.wf_beta(full, full) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- conventions


def test_perfect_prediction_scores_best_everywhere():
    gt = CASES[1][1]
    scores = m.all_metrics(gt, gt)
    assert scores["mae"] == 0.0
    for key in ("iou", "dice", "boundary_f1", "s_alpha", "e_phi"):
        assert scores[key] == pytest.approx(1.0, abs=1e-12), key
    assert scores["wf_beta"] == pytest.approx(1.0, abs=1e-9)


def test_empty_gt_conventions():
    """S-alpha / E-phi / MAE follow the reference (fraction of background predicted); an empty
    prediction on an empty GT is 1.0 everywhere (the reference gives wFb 0 and adaptive E 0)."""
    empty = np.zeros((12, 16), bool)
    pred = _square((12, 16), 3, 4, 4)  # 16 of 192 pixels
    perfect = m.all_metrics(empty, empty)
    assert perfect == {k: (0.0 if k == "mae" else 1.0) for k in m.METRIC_KEYS}
    assert _ref(sod.WeightedFmeasure(), empty * 1.0, empty)["wfm"] == 0.0  # the deviation
    assert _ref(sod.Emeasure(), empty * 1.0, empty)["em"]["adp"] == 0.0  # the deviation
    wrong = m.all_metrics(pred, empty)
    assert wrong["iou"] == wrong["wf_beta"] == wrong["boundary_f1"] == 0.0
    assert wrong["s_alpha"] == pytest.approx(1 - 16 / 192)
    assert wrong["e_phi"] == pytest.approx(1 - 16 / 192)
    assert wrong["mae"] == pytest.approx(16 / 192)


def test_full_gt_conventions():
    full = np.ones((12, 16), bool)
    pred = _square((12, 16), 3, 4, 4)
    assert m.s_alpha(pred, full) == pytest.approx(16 / 192)
    assert m.e_phi(pred, full) == pytest.approx(16 / 192)


def test_e_phi_empty_prediction_hand_computed():
    """A constant prediction has no deviation from its mean: the alignment term is 0 and every
    pixel scores (0 + 1)^2 / 4."""
    gt = _square((10, 10), 2, 2, 5)
    assert m.e_phi(np.zeros((10, 10)), gt) == pytest.approx(0.25)
    assert m.e_phi(np.ones((10, 10)), gt) == pytest.approx(0.25)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's mean of an empty slice
def test_s_alpha_defined_when_a_quadrant_is_empty():
    """GT in the last column puts the centroid split at the image edge; the reference's empty
    quadrant yields NaN there, ours skips the zero-weight quadrant."""
    gt = np.zeros((12, 16), bool)
    gt[:, -1] = True
    assert np.isnan(_ref(sod.Smeasure(), gt * 1.0, gt)["sm"])
    assert m.s_alpha(gt, gt) == pytest.approx(1.0)
    assert 0.0 < m.s_alpha(_square((12, 16), 3, 4, 4), gt) < 0.5


def test_wf_beta_far_false_alarm_costs_more_than_near_one():
    gt = _square((64, 64), 20, 20, 12)
    near = gt | _square((64, 64), 22, 32, 4)  # touching the object
    far = gt | _square((64, 64), 56, 56, 4)  # same area, far away
    assert m.iou(near, gt) == m.iou(far, gt)
    assert m.wf_beta(near, gt) > m.wf_beta(far, gt)


def test_all_metrics_keys_and_consistency():
    name, gt, soft = CASES[0]
    scores = m.all_metrics(soft, gt, tolerance=2)
    assert tuple(scores) == m.METRIC_KEYS
    assert all(isinstance(v, float) for v in scores.values())
    binary = soft > 0.5
    assert scores["iou"] == m.iou(binary, gt)
    assert scores["dice"] == m.dice(binary, gt)
    assert scores["boundary_f1"] == m.boundary_f1(soft, gt, tolerance=2)
    assert scores["mae"] == m.mae(soft, gt)
    assert scores["s_alpha"] == m.s_alpha(soft, gt)
    assert scores["e_phi"] == m.e_phi(soft, gt)
    assert scores["wf_beta"] == m.wf_beta(soft, gt)
    assert 0.0 < scores["iou"] < 1.0 and scores["mae"] > 0.0


def test_worse_prediction_scores_worse():
    gt = CASES[0][1]
    good, bad = m.all_metrics(np.roll(gt, 1, 1), gt), m.all_metrics(np.roll(gt, 8, 1), gt)
    assert bad["mae"] > good["mae"]
    for key in ("iou", "dice", "boundary_f1", "s_alpha", "e_phi", "wf_beta"):
        assert bad[key] < good[key], key


@pytest.mark.parametrize(
    "pred,gt",
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool)),  # shape mismatch
        (np.full((4, 4), 255, np.uint8), np.zeros((4, 4), bool)),  # 0..255 mask
        (np.full((4, 4), np.nan), np.zeros((4, 4), bool)),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool)),  # a batch, not one mask
    ],
)
def test_bad_inputs_are_refused(pred, gt):
    with pytest.raises(ValueError):
        m.all_metrics(pred, gt)
