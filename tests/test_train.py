"""Decoder training: true batching, determinism, budgets, failure and health signals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.finetune.train import (
    TrainConfig,
    TrainingFailed,
    _health,
    accumulate_gradients,
    batch_logits,
    micro_batch_size,
    segmentation_loss,
    train_decoder,
)
from specialsam.models.tiny import build_tiny_sam
from tests.conftest import scene_task


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_tiny_sam("tiny-s").eval()
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"))
    folder = build_pack(
        scene_task(24, 8, 4),
        sam,
        model_identity(sam, "tiny-s", "random-init"),
        cache,
        PackSettings(),
        progress=False,
    )
    return Pack(folder, cache)


def fresh_sam():
    torch.manual_seed(0)
    return build_tiny_sam("tiny-s").eval()


def test_batched_gradients_equal_per_sample_gradients(pack):
    sam = fresh_sam()
    tr = pack.split("train")
    idx = [0, 3, 5, 7]
    emb = torch.from_numpy(tr.embeddings(idx))
    coords = torch.tensor(
        [
            [[100.0, 120.0], [0, 0]],
            [[10.0, 20.0], [200.0, 220.0]],
            [[50.0, 60.0], [0, 0]],
            [[30.0, 40.0], [90.0, 100.0]],
        ]
    )
    labels = torch.tensor([[1, -1], [2, 3], [1, -1], [2, 3]])
    target = torch.from_numpy(np.stack([np.asarray(tr.masks[i]) for i in idx]).astype(np.float32) / 255)
    valid = torch.ones_like(target)
    cfg = TrainConfig(bce_weight=0.3, dice_weight=0.7, focal_weight=0.2)
    # the IoU head gets no gradient from the segmentation loss: compare the parameters that do
    params = [p for n, p in sam.mask_decoder.named_parameters() if not n.startswith("iou_prediction_head")]

    loss = segmentation_loss(batch_logits(sam, emb, coords, labels, 256), target, valid, cfg).mean()
    batched = torch.autograd.grad(loss, params)
    per = [torch.zeros_like(p) for p in params]
    for i in range(4):
        li = (
            segmentation_loss(
                batch_logits(sam, emb[i : i + 1], coords[i : i + 1], labels[i : i + 1], 256),
                target[i : i + 1],
                valid[i : i + 1],
                cfg,
            ).mean()
            / 4
        )
        for acc, g in zip(per, torch.autograd.grad(li, params)):
            acc += g
    for a, b in zip(batched, per):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_chunked_gradient_accumulation_equals_the_whole_batch(pack):
    from specialsam.device import select_device

    tr = pack.split("train")
    idx = [0, 1, 2, 3, 4]
    emb = torch.from_numpy(tr.embeddings(idx))
    coords = torch.tensor([[[40.0 + 20 * i, 50.0], [0, 0]] for i in idx])
    labels = torch.tensor([[1, -1]] * len(idx))
    target = torch.from_numpy(np.stack([np.asarray(tr.masks[i]) for i in idx]).astype(np.float32) / 255)
    valid = torch.ones_like(target)
    cfg, dev = TrainConfig(focal_weight=0.1), select_device("cpu", "fp32")
    grads, losses = [], []
    for micro in (0, 2):  # whole batch, then chunks of 2, 2, 1
        sam = fresh_sam()
        losses.append(accumulate_gradients(sam, emb, coords, labels, target, valid, cfg, dev, 256, micro))
        grads.append([p.grad.clone() for p in sam.mask_decoder.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # auto: chunks only for SAM-sized embeddings on CPU; an explicit setting always wins
    assert micro_batch_size(0, 64, dev) == 4 and micro_batch_size(0, 16, dev) == 0
    assert micro_batch_size(8, 16, dev) == 8


def test_training_is_deterministic_and_respects_step_budget(pack):
    cfg = TrainConfig(lr=1e-3, n_train=24, epochs=3, max_steps=4, batch_size=8, patience=0, seed=3)
    a = train_decoder(fresh_sam(), pack, cfg)
    b = train_decoder(fresh_sam(), pack, cfg)
    assert a.steps == 4 and b.steps == 4  # 3 epochs x 3 steps capped at 4 optimizer steps
    assert len(a.history) == 2
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    for k in a.decoder_state:
        assert torch.equal(a.decoder_state[k], b.decoder_state[k])
    c = train_decoder(fresh_sam(), pack, TrainConfig(**{**cfg.__dict__, "seed": 4}))
    assert any(not torch.equal(a.decoder_state[k], c.decoder_state[k]) for k in a.decoder_state)


def test_training_learns_and_keeps_the_best_epoch(pack):
    sam = fresh_sam()
    before = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    r = train_decoder(sam, pack, TrainConfig(lr=3e-3, n_train=24, epochs=4, batch_size=8, patience=0))
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0]
    assert r.best_val_miou == max(h["val_miou"] for h in r.history)
    for k, v in sam.mask_decoder.state_dict().items():  # the model holds the best epoch's weights
        assert torch.equal(v, r.decoder_state[k])
    assert any(not torch.equal(before[k], r.decoder_state[k]) for k in before)
    # only the decoder learned
    fresh = fresh_sam()
    for k, v in sam.prompt_encoder.state_dict().items():
        assert torch.equal(v, fresh.prompt_encoder.state_dict()[k])


def test_callback_can_stop_and_nan_fails_with_a_reason(pack):
    seen = []
    r = train_decoder(
        fresh_sam(),
        pack,
        TrainConfig(n_train=8, epochs=5, batch_size=8, patience=0),
        on_epoch=lambda e, m: seen.append(m["val_miou"]) or e >= 1,
    )
    assert len(seen) == 2 and r.stopped_early

    with pytest.raises(TrainingFailed, match="loss became nan"):
        train_decoder(
            fresh_sam(), pack, TrainConfig(lr=1e30, n_train=24, epochs=3, batch_size=8, grad_clip=0)
        )


def test_health_flags():
    h = [
        {"train_loss": 0.5, "val_miou": 0.5},
        {"train_loss": 0.2, "val_miou": 0.7},
        {"train_loss": 0.05, "val_miou": 0.6},
    ]
    assert _health(h, [0.5] * 30) == ["divergence"]
    assert "collapse" in _health([{"train_loss": 0.005, "val_miou": 0.9}], [0.005] * 10)
    assert _health(h[:2], [0.3] * 25 + [2.0] + [0.3] * 5) == ["spike"]
    assert _health(h[:2], [0.3] * 40) == []


def test_invalid_configs_are_user_errors():
    from specialsam.errors import UserError

    with pytest.raises(UserError, match="lr"):
        TrainConfig(lr=0).validate()
    with pytest.raises(UserError, match="all 0"):
        TrainConfig(bce_weight=0, dice_weight=0).validate()


def test_decoder_optimizer_is_fused_adamw_on_cpu():
    from specialsam.finetune.train import decoder_optimizer

    p = torch.nn.Parameter(torch.ones(3))
    opt = decoder_optimizer([p], TrainConfig(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 1e-2), atol=1e-6)  # Adam's first step: lr * sign
