"""Run SAM's prompt encoder and mask decoder on a true batch of different images.

``MaskDecoder.predict_masks`` repeats *one* image embedding once per prompt
(``repeat_interleave``), so training on many images means a Python loop. These helpers run the
same modules (same weights, same maths) with one embedding row per prompt, so a batch of P
prompts over any mix of images is one forward pass. The equivalence with SAM's own path is
tested.

Prompt convention (exactly SAM's): points get one padding token (label -1) appended, a box is two
corner tokens (labels 2 and 3). A single point and a box are both two tokens, so point/box mixed
batches need no extra padding. Rows of a batch must have equal token counts: pad shorter prompts
with label -1 tokens (each becomes SAM's not-a-point embedding). A previous prediction can be fed
back as SAM's dense mask prompt (``mask_input``).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder


def embed_sparse(pe: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(P,K,2) coords in model-input pixels + (P,K) labels in {-1,0,1,2,3} -> (P,K,C) tokens."""
    emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
    pad = (labels == -1).unsqueeze(-1)
    emb = torch.where(pad, torch.zeros_like(emb), emb)
    table = torch.cat(
        [pe.not_a_point_embed.weight] + [p.weight for p in pe.point_embeddings], dim=0
    )  # row 0: not-a-point, rows 1..4: labels 0..3
    return emb + table[(labels + 1).long()]


def embed_dense(
    pe: PromptEncoder,
    n: int,
    mask_input: torch.Tensor | None = None,
    use_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense prompt embedding for n prompts: SAM's 'no mask' embedding, or, with ``mask_input``
    (P, 1, 4h, 4w) low-res logits (a previous prediction, as corrective clicking feeds back), the
    prompt encoder's mask downscaling of them, as ``PromptEncoder._embed_masks`` does.
    ``use_mask`` (P,) bool picks per prompt which rows take their mask (the others: no mask)."""
    h, w = pe.image_embedding_size
    none = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
    if mask_input is None:
        return none
    dense = pe.mask_downscaling(mask_input.to(none.dtype))
    if use_mask is None:
        return dense
    return torch.where(use_mask.reshape(-1, 1, 1, 1), dense, none)


def decode_batched(
    decoder: MaskDecoder,
    pe: PromptEncoder,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
    use_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits (P, 1+M, 4h, 4w) and IoU predictions (P, 1+M) for all mask tokens.

    ``embeddings`` has one row per prompt (index the image embeddings with the prompt's image).
    Output 0 is SAM's single-mask output, outputs 1.. the multimask ones. ``mask_input`` /
    ``use_mask``: an optional mask prompt per row (see :func:`embed_dense`).
    """
    n = embeddings.shape[0]
    sparse = embed_sparse(pe, coords, labels)
    dense = embed_dense(pe, n, mask_input, use_mask).to(embeddings.dtype)
    image_pe = pe.get_dense_pe().to(embeddings.dtype)

    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(n, -1, -1), sparse.to(out_tokens.dtype)), 1)
    src = embeddings + dense
    pos_src = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)
