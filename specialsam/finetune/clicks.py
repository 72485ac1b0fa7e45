"""Corrective clicks: the click simulator, interactive evaluation and training's corrective points.

People click again where SAM's mask is wrong, so one-click mIoU understates what a decoder gives an
annotator. Interactive evaluation follows the SAM paper's protocol with RITM's click simulator:
interaction 1 is the strategy's own prompt (a point, four extreme points or a box); each next click
goes to the pixel farthest from the boundary of the *larger* error region (the false-negative or
false-positive region whose farthest-from-boundary pixel lies deeper, as RITM's clicker compares
them; the image border counts as boundary): a positive click on a false negative, a negative click
on a false positive. The previous low-res logits are fed back as SAM's mask prompt. It is
deterministic (ties: the first pixel in row-major order) and batched: round *k* of every image of a
chunk is one decoder forward pass; an image leaves the batch once it has no error left, or once it
has the largest requested click count and reached every NoC threshold.

Scores are at the ground truth's resolution through the same post-processing as
:func:`specialsam.finetune.evaluate.score_split`, so the IoU after 1 click is that function's IoU.

Training (``train.click_rounds``) samples its corrective points uniformly from the error region
instead (the SAM paper's and micro-sam's recipe), on the loss-resolution targets, in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune import metrics as M
from specialsam.finetune.pack import Split
from specialsam.models.batched import decode_batched
from specialsam.models.inference import input_size, model_side, select_logits
from specialsam.prompts import NEG_LABEL, PAD_LABEL, POS_LABEL, Prompt, to_model_coords

CLICKS = (1, 2, 3, 5, 9)
"""Click budgets the mIoU curve reports (the SAM paper's 1, 2, 3, 5 and 9 points)."""
NOC_THRESHOLDS = (0.85, 0.90)
MAX_CLICKS = 20
"""NoC cap: an image that never reaches a threshold counts this many clicks (RITM's convention)."""


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool


def inner_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest non-region pixel, the image border
    counting as outside (RITM pads the error masks by one pixel before its distance transform).

    scipy's exact transform (float64, single-threaded: OpenCV's multi-threaded float32 one broke
    exact ties differently from run to run, and a click is an argmax over ties) on the region's
    bounding box: on whole images it was half of interactive evaluation's time."""
    out = np.zeros(region.shape, np.float64)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if not len(rows):
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    out[box] = distance_transform_edt(np.pad(region[box], 1))[1:-1, 1:-1]
    return out


def depth_bound(region: np.ndarray) -> float:
    """An upper bound of a region's largest :func:`inner_distance`, from its area alone.

    Every pixel closer than m to the deepest pixel (depth m) is in the region, and their unit
    squares cover the disk of radius m - sqrt(1/2) around it: area >= pi (m - sqrt(1/2))^2."""
    return math.sqrt(float(region.sum()) / math.pi) + math.sqrt(0.5) + 1e-9


def _deepest(region: np.ndarray, clicked: np.ndarray | None) -> tuple[np.ndarray, float]:
    d = inner_distance(region)
    if clicked is not None:
        d[clicked] = 0
    return d, float(d.max(initial=0.0))


def next_click(pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """RITM's next click for a binary prediction against the ground truth; None without any error.

    ``clicked`` (bool, same shape) marks pixels clicked before: they are not clicked again. The
    larger-area error is transformed first; the other only when its :func:`depth_bound` could
    reach the first's depth (the rule is RITM's: positive iff the false negatives lie deeper)."""
    regions = {True: gt & ~pred, False: pred & ~gt}  # positive click: false negative
    first = bool(regions[True].sum() >= regions[False].sum())
    d1, m1 = _deepest(regions[first], clicked)
    if depth_bound(regions[not first]) < m1:
        positive, d, m = first, d1, m1
    else:
        d2, m2 = _deepest(regions[not first], clicked)
        m_fn, m_fp = (m1, m2) if first else (m2, m1)
        if m_fn == 0 and m_fp == 0:
            return None
        positive = bool(m_fn > m_fp)
        d, m = (d1, m1) if positive == first else (d2, m2)
    y, x = np.argwhere(d == m)[0]
    return Click(int(x), int(y), positive)


def append_tokens(
    coords: torch.Tensor, labels: torch.Tensor, xy: torch.Tensor, new_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one token per row: (P,K,2), (P,K) + (P,2), (P,) -> (P,K+1,2), (P,K+1).

    SAM's point prompts end in one padding token (label -1); the new point goes before it, so a
    point prompt keeps exactly SAM's layout. Box prompts have no padding token: the point is
    appended (the decoder's sparse tokens are unordered). Every row grows by one, so a batch of
    equal-length prompts stays one tensor; a row without a click gets a padding token."""
    has_pad = (labels[:, -1] == PAD_LABEL).reshape(-1, 1)
    xy, new_labels = xy.to(coords.dtype).unsqueeze(1), new_labels.to(labels.dtype).unsqueeze(1)
    inserted_c = torch.cat([coords[:, :-1], xy, coords[:, -1:]], 1)
    inserted_l = torch.cat([labels[:, :-1], new_labels, labels[:, -1:]], 1)
    appended_c = torch.cat([coords, xy], 1)
    appended_l = torch.cat([labels, new_labels], 1)
    return (
        torch.where(has_pad.unsqueeze(-1), inserted_c, appended_c),
        torch.where(has_pad, inserted_l, appended_l),
    )


def clicks_to_reach(curve: np.ndarray, threshold: float, max_clicks: int) -> np.ndarray:
    """NoC per image: the first click count (1-based) whose IoU reaches ``threshold``; the cap
    ``max_clicks`` when none of the first ``max_clicks`` does. ``curve`` is (N, R) IoU per click."""
    reached = np.asarray(curve)[:, :max_clicks] >= threshold
    return np.where(reached.any(1), reached.argmax(1) + 1, max_clicks).astype(np.int64)


@dataclass
class InteractiveScores:
    """Per-image IoU after each requested click count and clicks to reach each threshold."""

    strategy: str
    keys: list[str]
    clicks: tuple[int, ...]
    iou: np.ndarray
    """(N, len(clicks)) IoU after ``clicks[j]`` interactions (interaction 1: the strategy's prompt)."""
    noc: dict[float, np.ndarray]
    """threshold -> (N,) clicks needed, ``max_clicks`` when never reached."""
    max_clicks: int
    skipped_empty: int

    def means(self) -> tuple[dict[int, float], dict[float, float]]:
        """mIoU after each click count, and mean NoC per threshold (over scored images)."""
        return (
            {k: _mean(self.iou[:, j]) for j, k in enumerate(self.clicks)},
            {t: _mean(v) for t, v in self.noc.items()},
        )

    def to_dict(self) -> dict:
        """As stored in a trial's record and a baseline's per-image file (JSON)."""
        return {
            "strategy": self.strategy,
            "keys": self.keys,
            "clicks": list(self.clicks),
            "iou": self.iou.tolist(),
            "noc": {str(t): v.tolist() for t, v in self.noc.items()},
            "max_clicks": self.max_clicks,
            "skipped_empty": self.skipped_empty,
        }

    @classmethod
    def from_dict(cls, d: dict) -> InteractiveScores:
        clicks = tuple(int(k) for k in d["clicks"])
        return cls(
            strategy=d["strategy"],
            keys=list(d["keys"]),
            clicks=clicks,
            iou=np.asarray(d["iou"], dtype=np.float64).reshape(-1, len(clicks)),
            noc={float(t): np.asarray(v, dtype=np.int64) for t, v in d["noc"].items()},
            max_clicks=int(d["max_clicks"]),
            skipped_empty=int(d["skipped_empty"]),
        )


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


@dataclass
class _Chunk:
    """One chunk of images under simulation: their prompts so far, last logits and predictions."""

    gts: list[np.ndarray]
    hws: list[tuple[int, int]]
    coords: torch.Tensor
    labels: torch.Tensor
    low: torch.Tensor | None
    clicked: list[np.ndarray]
    curve: np.ndarray
    active: np.ndarray


def _predict_round(
    sam: Sam, ch: _Chunk, emb: torch.Tensor, r: int, selection: str, feed_logits: bool, dev: DeviceChoice
) -> dict[int, np.ndarray]:
    """Decode the active rows (previous logits as mask prompt after round 0 when ``feed_logits``);
    binary predictions at the ground truth's resolution, as ``predict_masks`` post-processes them."""
    a = torch.from_numpy(np.nonzero(ch.active)[0]).to(dev.device)
    mask_in = None if r == 0 or ch.low is None or not feed_logits else ch.low[a]
    with dev.autocast():
        masks, iou = decode_batched(
            sam.mask_decoder, sam.prompt_encoder, emb[a], ch.coords[a], ch.labels[a], mask_input=mask_in
        )
        logits = select_logits(masks, iou, selection if r == 0 else "single").float()
    if ch.low is None:
        ch.low = torch.zeros(len(ch.gts), 1, *logits.shape[-2:], device=dev.device)
    ch.low[a] = logits[:, None]
    side = model_side(sam)
    preds = {}
    for j, i in enumerate(a.tolist()):
        hw = ch.hws[i]
        up = sam.postprocess_masks(logits[j][None, None], input_size(hw, side), hw)
        preds[i] = (up[0, 0] > sam.mask_threshold).cpu().numpy()
    return preds


def _click_round(
    ch: _Chunk,
    preds: dict[int, np.ndarray],
    r: int,
    need: tuple[int, int],
    thresholds: tuple[float, ...],
    side: int,
) -> None:
    """Score round ``r``'s predictions, then give every still-needed image its next click.

    ``need``: (the curve's largest click count, the rounds in all). An image leaves the batch with
    no error left, at the last round, or past the curve's budget with every threshold reached."""
    n = len(ch.gts)
    xy, lab = torch.zeros(n, 2), torch.full((n,), PAD_LABEL, dtype=torch.long)
    for i, pred in preds.items():
        ch.curve[i, r:] = M.iou(pred, ch.gts[i])  # filled forward: a frozen image keeps its IoU
        done_budget = r + 1 >= need[0] and all((ch.curve[i, : r + 1] >= t).any() for t in thresholds)
        click = None if r + 1 >= need[1] or done_budget else next_click(pred, ch.gts[i], ch.clicked[i])
        if click is None:
            ch.active[i] = False
            continue
        ch.clicked[i][click.y, click.x] = True
        p = Prompt(np.array([[click.x, click.y]], np.float32), np.array([POS_LABEL]))
        xy[i] = torch.from_numpy(to_model_coords(p, ch.hws[i], side)[0])
        lab[i] = POS_LABEL if click.positive else NEG_LABEL
    d = ch.coords.device
    ch.coords, ch.labels = append_tokens(ch.coords, ch.labels, xy.to(d), lab.to(d))


def _simulate(
    sam: Sam,
    split: Split,
    idx: list[int],
    prompts: tuple[np.ndarray, np.ndarray],
    need: tuple[int, int],
    thresholds: tuple[float, ...],
    selection: str,
    feed_logits: bool,
    dev: DeviceChoice,
) -> np.ndarray:
    """IoU after each interaction (len(idx), rounds) for the images ``idx``, one forward pass per
    round for all of them; ``prompts``: the split's stored (coords, labels) of the strategy."""
    coords, labels = prompts
    rounds = need[1]
    d = dev.device
    gts = [split.gt(i) for i in idx]
    ch = _Chunk(
        gts=gts,
        hws=[tuple(split.original_hw[i]) for i in idx],
        coords=torch.from_numpy(coords[idx]).to(d),
        labels=torch.from_numpy(labels[idx]).to(d),
        low=None,
        clicked=[np.zeros(g.shape, bool) for g in gts],
        curve=np.zeros((len(idx), rounds)),
        active=np.ones(len(idx), bool),
    )
    emb = torch.from_numpy(split.embeddings(idx)).to(d)
    side = model_side(sam)
    for r in range(rounds):
        if not ch.active.any():
            break
        preds = _predict_round(sam, ch, emb, r, selection, feed_logits, dev)
        _click_round(ch, preds, r, need, thresholds, side)
    return ch.curve


@torch.no_grad()
def interactive_scores(
    sam: Sam,
    split: Split,
    strategy: str,
    clicks: Sequence[int] = CLICKS,
    thresholds: Sequence[float] = NOC_THRESHOLDS,
    max_clicks: int = MAX_CLICKS,
    mask_selection: str = "single",
    dev: DeviceChoice | None = None,
    chunk: int = 64,
    feed_logits: bool = True,
) -> InteractiveScores:
    """Simulated corrective clicking on a pack split, from ``strategy``'s stored first prompt.

    Interaction 1 is the strategy's prompt (scored with ``mask_selection``, as ``score_split``
    does), later ones use SAM's single-mask output with the previous logits as mask prompt (the
    SAM paper's protocol; ``feed_logits=False``: points only, for decoders never trained with mask
    prompts).
    Images with an empty mask are skipped and counted, as in ``score_split``."""
    dev = (dev or select_device()).for_decoder(sam.mask_decoder.transformer_dim)
    sam.to(dev.device).eval()
    clicks, thresholds = tuple(sorted(set(clicks))), tuple(thresholds)
    rounds = max(max(clicks, default=1), max_clicks if thresholds else 0)
    need = (max(clicks, default=1), rounds)  # the curve's budget, then the NoC cap
    coords, labels, ok = split.prompts(strategy)
    idx_all = [i for i in range(len(split)) if ok[i]]
    curve = np.zeros((len(idx_all), rounds))
    for s in range(0, len(idx_all), chunk):
        idx = idx_all[s : s + chunk]
        curve[s : s + len(idx)] = _simulate(
            sam, split, idx, (coords, labels), need, thresholds, mask_selection, feed_logits, dev
        )
    return InteractiveScores(
        strategy=strategy,
        keys=[split.keys[i] for i in idx_all],
        clicks=clicks,
        iou=curve[:, [k - 1 for k in clicks]],
        noc={t: clicks_to_reach(curve, t, max_clicks) for t in thresholds},
        max_clicks=max_clicks,
        skipped_empty=len(split) - len(idx_all),
    )


# ------------------------------------------------------------------------------ training clicks


def sample_error_clicks(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective point per row, uniform over its error region (the SAM paper's training).

    ``pred``, ``target``, ``valid``: (B, R, R) bool; ``u``: (B,) uniform [0, 1) draws that pick
    the point (drawn by the caller's seeded generator, so the choice is device-independent).
    Returns (B, 2) x, y in the R-pixel frame and (B,) labels: positive on a false negative,
    negative on a false positive, padding (-1, at 0, 0) where a row has no error."""
    b, _, w = pred.shape
    err = ((pred != target) & valid).flatten(1)
    cum = err.long().cumsum(1)
    count = cum[:, -1]
    rank = (u.double() * count).floor().long().clamp(max=(count - 1).clamp(min=0)) + 1
    pos = torch.searchsorted(cum, rank.unsqueeze(1)).squeeze(1).clamp(max=err.shape[1] - 1)
    xy = torch.stack([pos % w, pos // w], 1).float()
    lab = target.flatten(1).gather(1, pos.unsqueeze(1)).squeeze(1).long()  # 1: FN -> positive
    has = count > 0
    return torch.where(has.unsqueeze(1), xy, torch.zeros_like(xy)), torch.where(
        has, lab, torch.full_like(lab, PAD_LABEL)
    )
