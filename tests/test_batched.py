"""The batched decoder path computes exactly what SAM's own predictor path computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specialsam.models.batched import decode_batched, embed_sparse
from specialsam.models.tiny import build_tiny_sam


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_tiny_sam("tiny-s").eval()


def test_points_match_prompt_encoder_and_predict_masks(sam):
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    emb = torch.randn(1, 64, 16, 16)
    pts = torch.tensor([[[40.0, 60.0]], [[200.0, 100.0]], [[128.0, 10.0]]])
    lab = torch.ones(3, 1, dtype=torch.long)
    sparse, dense = pe(points=(pts, lab), boxes=None, masks=None)
    ref_masks, ref_iou = dec.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
    # our convention: the point plus SAM's padding token
    coords = torch.cat([pts, torch.zeros(3, 1, 2)], 1)
    labels = torch.cat([lab, -torch.ones(3, 1, dtype=torch.long)], 1)
    assert torch.allclose(embed_sparse(pe, coords, labels), sparse, atol=1e-6)
    masks, iou = decode_batched(dec, pe, emb.expand(3, -1, -1, -1), coords, labels)
    assert torch.allclose(masks, ref_masks, atol=1e-5)
    assert torch.allclose(iou, ref_iou, atol=1e-5)


def test_boxes_match_prompt_encoder(sam):
    pe = sam.prompt_encoder
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [0.0, 0.0, 255.0, 255.0]])
    sparse, _ = pe(points=None, boxes=boxes, masks=None)
    coords = boxes.reshape(2, 2, 2)
    labels = torch.tensor([[2, 3], [2, 3]])
    assert torch.allclose(embed_sparse(pe, coords, labels), sparse, atol=1e-6)


def test_batch_of_different_images_equals_one_image_at_a_time(sam):
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    embs = torch.randn(4, 64, 16, 16)
    coords = torch.rand(4, 2, 2) * 255
    labels = torch.tensor([[1, -1], [2, 3], [1, -1], [2, 3]])
    coords[1] = coords[1].sort(0).values
    coords[3] = coords[3].sort(0).values
    masks, iou = decode_batched(dec, pe, embs, coords, labels)
    for i in range(4):
        m1, i1 = decode_batched(dec, pe, embs[i : i + 1], coords[i : i + 1], labels[i : i + 1])
        assert torch.allclose(masks[i], m1[0], atol=1e-5)
        assert torch.allclose(iou[i], i1[0], atol=1e-5)
    # and the images really differ: a batch is not one embedding repeated
    assert not torch.allclose(masks[0], masks[2])


def test_tiny_models_are_sam_classes_of_the_stated_sizes():
    from segment_anything.modeling import Sam

    from specialsam.models.tiny import count_parameters

    s, m = build_tiny_sam("tiny-s"), build_tiny_sam("tiny-m")
    assert isinstance(s, Sam) and isinstance(m, Sam)
    assert 0.5e6 <= count_parameters(s) <= 1.0e6
    assert 1.5e6 <= count_parameters(m) <= 4.0e6
    out = s.image_encoder(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, 64, 16, 16)
    assert np.isfinite(out.detach().numpy()).all()


@pytest.mark.parametrize(
    "shape,size", [((3, 64, 64), 256), ((2, 16, 16), 40), ((2, 48, 64), 100), ((1, 64, 64), 64)]
)
def test_matrix_upsampling_equals_interpolate_values_and_gradients(shape, size):
    from specialsam.models.upsample import upsample_logits

    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.interpolate(
        ref_x[:, None], size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]
    out = upsample_logits(x, size)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-4)


def test_matrix_upsampling_stays_fp32_under_autocast_and_after_inference_mode():
    from specialsam.models.upsample import interpolation_matrix, upsample_logits

    interpolation_matrix.cache_clear()
    x = torch.randn(2, 32, 32)
    with torch.inference_mode():  # the cached matrix is first built during validation
        upsample_logits(x, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample_logits(x.to(torch.bfloat16).requires_grad_(True), 96)
    assert y.dtype == torch.float32
    y.sum().backward()  # an inference-mode constant would refuse to be saved for backward
