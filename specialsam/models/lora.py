"""Low-rank adapters (LoRA) on an image encoder's blocks, as weight deltas.

Each adapted weight W becomes ``W + (alpha / r) * B @ A`` on chosen output rows, through
``torch.nn.utils.parametrize``: A (r x fan-in) starts Kaiming-uniform, B (rows x r) at zero, so a
freshly adapted model computes exactly the base model's outputs. Writing LoRA as a weight delta
instead of a side branch lets one mechanism cover every layer the encoders have:

    target   SAM ViT (vit_b/l/h)        TinyViT (vit_t)              tiny generalists
    q, k, v  rows of attn.qkv           rows of attn.qkv (per head)  rows of attn.in_proj_weight
    proj     attn.proj                  attn.proj                    attn.out_proj
    mlp      mlp.lin1, mlp.lin2         mlp.fc1, mlp.fc2             mlp.0, mlp.2
    conv     -                          -                            conv1.0, conv2 (3x3, stride 16)

SAMed's recipe (rank 4 on q and v of the fused ``qkv``) needs adapters on *parts* of one fused
projection, and the tiny generalists' ``nn.MultiheadAttention`` keeps its q/k/v in one bare
parameter; a delta on row indices handles both (TinyViT interleaves q, k, v per head). Convs: A is
a (r, c_in, k, k) kernel and B a 1x1 projection, folded into one k x k delta (as LoRA for convs).
``merge_lora`` folds the deltas into the weights for good, leaving SAM's official key layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from specialsam.models.encoder_steps import Step

TARGETS = ("q", "k", "v", "proj", "mlp", "conv")


class LoraDelta(nn.Module):
    """Parametrization ``W -> W + scale * B @ A`` on output rows ``rows`` (all rows when None)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, rows: torch.Tensor | None) -> None:
        super().__init__()
        n_out = weight.shape[0] if rows is None else len(rows)
        fan_in = weight[0].numel()
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(n_out, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / peft
        self.register_buffer("rows", rows, persistent=False)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        d = (self.lora_B @ self.lora_A) * self.scale
        return d.reshape(d.shape[0], *weight.shape[1:])

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        d = self.delta(weight).to(weight.dtype)
        return weight + d if self.rows is None else weight.index_add(0, self.rows, d)


@dataclass(frozen=True)
class Site:
    """One adapted weight: ``module.<param>`` (rows: a q/k/v part of a fused projection)."""

    path: str
    """Module path under ``image_encoder``."""
    module: nn.Module
    param: str
    rows: torch.Tensor | None = None


def _parts(n: int, width: int) -> dict[str, torch.Tensor]:
    """Rows of q, k, v in a fused [q; k; v] projection of ``n`` = 3 x width outputs."""
    assert n == 3 * width
    return {p: torch.arange(i * width, (i + 1) * width) for i, p in enumerate("qkv")}


def _tiny_vit_parts(attn: nn.Module) -> dict[str, torch.Tensor]:
    """TinyViT's qkv rows are [q_h, k_h, v_h] per head h (``view(B, N, heads, -1).split(...)``)."""
    kd, d, heads = attn.key_dim, attn.d, attn.num_heads
    per = 2 * kd + d
    spans = {"q": (0, kd), "k": (kd, 2 * kd), "v": (2 * kd, per)}
    return {
        p: torch.cat([torch.arange(h * per + a, h * per + b) for h in range(heads)])
        for p, (a, b) in spans.items()
    }


def block_sites(step: Step, family: str) -> dict[str, list[Site]]:
    """Target name -> the weights it adapts in one block step."""
    (blk,) = step.owns
    p = step.name
    if family == "sam_vit":
        parts = _parts(blk.attn.qkv.out_features, blk.attn.qkv.in_features)
        out = {k: [Site(f"{p}.attn.qkv", blk.attn.qkv, "weight", r)] for k, r in parts.items()}
        out["proj"] = [Site(f"{p}.attn.proj", blk.attn.proj, "weight")]
        out["mlp"] = [Site(f"{p}.mlp.{n}", getattr(blk.mlp, n), "weight") for n in ("lin1", "lin2")]
        return out
    if family == "tiny_vit":
        parts = _tiny_vit_parts(blk.attn)
        out = {k: [Site(f"{p}.attn.qkv", blk.attn.qkv, "weight", r)] for k, r in parts.items()}
        out["proj"] = [Site(f"{p}.attn.proj", blk.attn.proj, "weight")]
        out["mlp"] = [Site(f"{p}.mlp.{n}", getattr(blk.mlp, n), "weight") for n in ("fc1", "fc2")]
        return out
    if hasattr(blk, "attn"):  # tiny AttnBlock
        mha = blk.attn
        parts = _parts(mha.in_proj_weight.shape[0], mha.embed_dim)
        out = {k: [Site(f"{p}.attn", mha, "in_proj_weight", r)] for k, r in parts.items()}
        out["proj"] = [Site(f"{p}.attn.out_proj", mha.out_proj, "weight")]
        out["mlp"] = [Site(f"{p}.mlp.{i}", blk.mlp[i], "weight") for i in (0, 2)]
        return out
    return {"conv": [Site(f"{p}.conv1.0", blk.conv1[0], "weight"), Site(f"{p}.conv2", blk.conv2, "weight")]}


def sites_for(steps: Sequence[Step], family: str, targets: Sequence[str]) -> list[Site]:
    """Every weight ``targets`` adapt in the block steps ``steps`` (others are skipped)."""
    out = []
    for s in steps:
        if s.block:
            found = block_sites(s, family)
            out += [site for t in targets for site in found.get(t, [])]
    return out


def available_targets(steps: Sequence[Step], family: str) -> list[str]:
    """Targets that exist in at least one block of ``steps``, in TARGETS order."""
    have = {t for s in steps if s.block for t in block_sites(s, family)}
    return [t for t in TARGETS if t in have]


def apply_lora(sites: Sequence[Site], rank: int, alpha: float, seed: int = 0) -> list[LoraDelta]:
    """Adapt each site (A drawn from ``seed``, the global RNG untouched); returns the adapters."""
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in sites:
            w = getattr(s.module, s.param)
            rows = None if s.rows is None else s.rows.to(w.device)
            delta = LoraDelta(w.detach(), rank, alpha, rows)
            parametrize.register_parametrization(s.module, s.param, delta, unsafe=True)
            out.append(delta)
    return out


def lora_modules(model: nn.Module) -> list[tuple[str, LoraDelta]]:
    """(module path + parameter name, adapter) of every LoRA delta in ``model``, in module order."""
    out = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for param, plist in m.parametrizations.items():
                out += [(f"{name}.{param}.{i}", d) for i, d in enumerate(plist) if isinstance(d, LoraDelta)]
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' A and B alone (a few hundred KB), keyed ``<module>.<param>.<i>.lora_A``."""
    out = {}
    for key, d in lora_modules(model):
        out[f"{key}.lora_A"] = d.lora_A.detach().cpu().clone()
        out[f"{key}.lora_B"] = d.lora_B.detach().cpu().clone()
    return out


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict: every adapter of ``model`` must find its A and B in ``state`` and nothing else."""
    found = lora_modules(model)
    want = {f"{k}.{p}" for k, _ in found for p in ("lora_A", "lora_B")}
    if want != set(state):
        raise KeyError(
            f"adapter keys differ: missing {sorted(want - set(state))[:3]}, "
            f"extra {sorted(set(state) - want)[:3]}"
        )
    with torch.no_grad():
        for key, d in found:
            d.lora_A.copy_(state[f"{key}.lora_A"])
            d.lora_B.copy_(state[f"{key}.lora_B"])


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA delta into its weight, in place: the model is plain again (official keys)."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            for param in list(m.parametrizations):
                with torch.no_grad():
                    parametrize.remove_parametrizations(m, param, leave_parametrized=True)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as if every LoRA delta were merged, the model left as it is: the
    official key layout (no ``parametrizations.*`` keys), adapted weights = W + delta."""
    out = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    with torch.no_grad():
        for name, m in model.named_modules():
            if parametrize.is_parametrized(m):
                for param in m.parametrizations:
                    out[f"{name}.{param}" if name else param] = getattr(m, param).detach().clone()
    return out
