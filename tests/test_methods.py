"""Fine-tuning methods (decoder / lora / full): LoRA, the encoder's tail, the activation cache, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from specialsam.errors import UserError
from specialsam.finetune.activations import (
    ActivationCache,
    CachedActivations,
    FrozenHead,
    activation_bytes,
    choose_feed,
    head_activations,
    precompute_activations,
)
from specialsam.finetune.cache import EmbeddingCache, ModelIdentity
from specialsam.finetune.encoder_train import (
    MethodTrainResult,
    encoder_step_gradients,
    specialise_with_method,
)
from specialsam.finetune.methods import (
    BLOCK_KINDS,
    MethodSettings,
    block_kinds,
    load_adapters,
    prepare_method,
    settings_record,
    trainable_names,
    validate_method,
)
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.finetune.pipeline import Scoring
from specialsam.finetune.train import TrainConfig
from specialsam.models.encoder_steps import encoder_family, encoder_steps, run_steps
from specialsam.models.export import export_tuned
from specialsam.models.headless import build_headless
from specialsam.models.inference import preprocess
from specialsam.models.lora import adapter_state_dict, lora_modules, merge_lora
from specialsam.models.registry import load_model, random_model
from tests.conftest import scene_task

ALL = ("q", "k", "v", "proj", "mlp")


def small_vit_sam(seed: int = 0) -> Sam:
    """SAM's own ViT classes at 64 px, 3 blocks (windowed + global, relative positions)."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(
        img_size=64, embed_dim=48, depth=3, num_heads=4, out_chans=32, use_rel_pos=True,
        window_size=2, global_attn_indexes=(2,),
    )  # fmt: skip
    return Sam(
        image_encoder=enc,
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=4),
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def images(n: int, side: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side + 8 * i, 3), dtype=np.uint8) for i in range(n)]


def batch_input(sam, imgs) -> torch.Tensor:
    return torch.stack([preprocess(sam, im) for im in imgs])


def randomise_adapters(sam, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, d in lora_modules(sam):
            d.lora_B.copy_(torch.randn(d.lora_B.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def vit_t():
    return load_model("vit_t", random_init=True, seed=0)[0]


# ------------------------------------------------------------------------------ steps and LoRA


@pytest.mark.parametrize("name", ["tiny-s", "tiny-m", "small-vit"])
def test_steps_reproduce_forward_and_lora_starts_as_the_base_model(name):
    sam = small_vit_sam() if name == "small-vit" else random_model(name, seed=1)
    x = batch_input(sam, images(2))
    with torch.no_grad():
        base = sam.image_encoder(x)
        assert torch.equal(run_steps(encoder_steps(sam.image_encoder), x), base)
        targets = ALL + ("conv",) if name.startswith("tiny") else ALL
        plan = prepare_method(sam, name, MethodSettings("lora", rank=2, targets=targets))
        assert len(lora_modules(sam)) > 0
        assert torch.equal(sam.image_encoder(x), base)  # B = 0: exactly the base outputs
        randomise_adapters(sam)
        tuned = plan.tail(plan.head(x))
        assert not torch.allclose(tuned, base, atol=1e-4)
        merged = merge_lora(sam).image_encoder(x)
    assert not lora_modules(sam) and not any("parametrizations" in k for k in sam.state_dict())
    torch.testing.assert_close(merged, tuned, atol=2e-5, rtol=1e-4)


def test_tiny_vit_tail_lora_at_init_and_merged(vit_t):
    """vit_t's last blocks on one (random) activation: LoRA at init = base, merged = unmerged."""
    sam = vit_t
    steps = encoder_steps(sam.image_encoder)
    assert (
        encoder_family(sam.image_encoder) == "tiny_vit"
        and block_kinds(steps, "tiny_vit") == BLOCK_KINDS["vit_t"]
    )
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    try:
        plan = prepare_method(sam, "vit_t", MethodSettings("lora", blocks=2, rank=3, targets=ALL))
        act = torch.randn(1, 64 * 64, 320, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            base = run_steps(plan.steps, act, plan.start)  # parametrized with B = 0
            assert torch.equal(plan.tail(act), base)
            randomise_adapters(sam)
            tuned = plan.tail(act)
            merge_lora(sam)
            torch.testing.assert_close(plan.tail(act), tuned, atol=1e-4, rtol=1e-4)
    finally:
        sam.load_state_dict(state)


def test_block_kinds_match_the_built_models(vit_t):
    for name in ("tiny-s", "tiny-m"):
        assert block_kinds(encoder_steps(random_model(name).image_encoder), "tiny") == BLOCK_KINDS[name]
    assert block_kinds(encoder_steps(vit_t.image_encoder), "tiny_vit") == BLOCK_KINDS["vit_t"]
    from segment_anything import sam_model_registry

    for name in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            sam = sam_model_registry[name](checkpoint=None)
        assert block_kinds(encoder_steps(sam.image_encoder), "sam_vit") == BLOCK_KINDS[name]


# ------------------------------------------------------------------------------ trainable parameters


def _tiny_tail(n: str) -> bool:
    return n.split(".")[1] in ("stage3", "attn", "neck", "pos_embed")


def _vit_tail(n: str) -> bool:
    return n.startswith(("image_encoder.neck", "image_encoder.blocks.1", "image_encoder.blocks.2"))


@pytest.mark.parametrize(
    "name,settings,expect",
    [
        ("tiny-m", MethodSettings("decoder"), lambda n: n.startswith("mask_decoder.")),
        ("tiny-m", MethodSettings("lora", blocks=2, targets=("q", "v", "conv")), lambda n: "lora_" in n),
        ("tiny-m", MethodSettings("full", blocks=2), _tiny_tail),
        ("small-vit", MethodSettings("lora", blocks=1), lambda n: "blocks.2.attn.qkv" in n and "lora_" in n),
        ("small-vit", MethodSettings("full", blocks=2), _vit_tail),
    ],
)
def test_gradients_reach_only_what_the_method_trains(name, settings, expect):
    sam = small_vit_sam() if name == "small-vit" else random_model(name, seed=2)
    plan = prepare_method(sam, name, settings)
    names = trainable_names(sam, plan)
    enc = {n for n in names if n.startswith("image_encoder.")}
    assert all(n.startswith("mask_decoder.") or expect(n) for n in names)
    assert all(expect(n) for n in enc) and (bool(enc) == settings.tunes_encoder)
    assert not any(n.startswith("prompt_encoder.") for n in names)
    if settings.method == "lora":  # every tuned block got its adapters, nothing else changed
        assert all(n.endswith(("lora_A", "lora_B")) for n in enc)
    if not settings.tunes_encoder:
        return
    randomise_adapters(sam)
    x = batch_input(sam, images(3))
    acts = plan.head(x)
    cfg = TrainConfig(batch_size=3)
    batch = _fake_batch(sam, 3)
    encoder_step_gradients(sam, plan, acts, batch, cfg, _cpu(), 32, micro=2)
    got = {n for n, p in sam.named_parameters() if p.grad is not None}
    assert got <= names
    assert {n for n in enc if "lora_A" not in n} <= got  # A's gradient is B^T(...) but still computed
    assert any(p.grad.abs().sum() > 0 for n, p in sam.named_parameters() if n in enc)


def _cpu():
    from specialsam.device import select_device

    return select_device("cpu", "fp32")


def _fake_batch(sam, n: int):
    from specialsam.finetune.train import _Batch

    side = sam.image_encoder.img_size
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(n, 32, 32, generator=g) > 0.5).float()
    return _Batch(
        idx=list(range(n)),
        coords=torch.rand(n, 2, 2, generator=g) * side,
        labels=torch.tensor([[1, -1]] * n),
        target=target,
        emb=torch.zeros(n),
        valid=torch.ones_like(target),
    )


def test_micro_batches_give_the_whole_batch_gradient():
    grads = []
    for micro in (0, 1):
        sam = random_model("tiny-s", seed=3)
        plan = prepare_method(sam, "tiny-s", MethodSettings("full"))
        acts = plan.head(batch_input(sam, images(3)))
        encoder_step_gradients(sam, plan, acts, _fake_batch(sam, 3), TrainConfig(), _cpu(), 32, micro)
        grads.append(torch.cat([p.grad.flatten() for p in plan.params if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------ activation cache


def test_cached_activations_equal_the_whole_encoder(tmp_path):
    sam = random_model("tiny-m", seed=4)
    plan = prepare_method(sam, "tiny-m", MethodSettings("lora", blocks=2, targets=("conv", "q")))
    imgs = images(3)
    identity = ModelIdentity("tiny-m", "random-init-4", "prep")
    cache = ActivationCache(tmp_path)
    hashes = [f"h{i}" for i in range(3)]
    keys = precompute_activations(cache, sam, plan, identity, imgs, hashes)
    assert (
        cache.encoder_calls == 3 and precompute_activations(cache, sam, plan, identity, imgs, hashes) == keys
    )
    assert cache.encoder_calls == 3  # all served from the cache the second time
    arr = cache.load(keys[0])
    assert arr.dtype == np.float16 and arr.nbytes == activation_bytes(plan, 256)
    emb_keys = [identity.key(h) for h in hashes]
    with torch.no_grad():
        cached = plan.tail(CachedActivations(ActivationCache(tmp_path), plan.start_name)(emb_keys))
        whole = sam.image_encoder(batch_input(sam, imgs))
        naive = plan.tail(FrozenHead(sam, plan, dict(zip(emb_keys, imgs)).__getitem__)(emb_keys))
    torch.testing.assert_close(naive, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, whole, atol=2e-2, rtol=1e-2)  # the activations' fp16 rounding
    # a different start block is a different entry
    other = prepare_method(random_model("tiny-m", seed=4), "tiny-m", MethodSettings("full", blocks=1))
    assert precompute_activations(cache, sam, other, identity, imgs[:1], hashes[:1])[0] not in keys


def test_cached_activations_equal_the_whole_encoder_for_vit_t(vit_t):
    plan = prepare_method(vit_t, "vit_t", MethodSettings("full", blocks=4))
    img = images(1, side=96)
    with torch.no_grad():
        whole = vit_t.image_encoder(batch_input(vit_t, img))
        acts = head_activations(vit_t, plan, img).half().float()
        cached = plan.tail(acts)
    assert acts.shape[1:] == plan_shape(plan)
    torch.testing.assert_close(cached, whole, atol=3e-2, rtol=1e-2)
    for p in vit_t.parameters():
        p.requires_grad_(False)


def plan_shape(plan):
    from specialsam.finetune.activations import activation_shape

    return activation_shape(plan, 1024)


def test_feed_falls_back_to_the_frozen_head_when_the_cache_is_too_large():
    with torch.device("meta"):
        from segment_anything import sam_model_registry

        vit_h = sam_model_registry["vit_h"](checkpoint=None)
    plan = prepare_method(vit_h, "vit_h", MethodSettings("lora", blocks=4))
    assert activation_bytes(plan, 1024) == 64 * 64 * 1280 * 2
    assert choose_feed(plan, 1024, 1000).mode == "cache"
    feed = choose_feed(plan, 1024, 10_000)
    assert feed.mode == "frozen" and "no_grad" in feed.describe()


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    sam = random_model("tiny-s", seed=0)
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"))
    task = scene_task(8, 4, 4)
    identity = model_identity(sam, "tiny-s", "random-init")
    folder = build_pack(task, sam, identity, cache, PackSettings(), progress=False)
    samples = [*task.train, *task.val, *task.test]
    return Pack(folder, cache), identity, samples


def test_lora_training_on_cached_activations_scores_the_tuned_encoder(tiny_pack):
    pack, identity, samples = tiny_pack
    sam = random_model("tiny-s", seed=0)
    settings = MethodSettings("lora", rank=2, targets=("q", "v", "conv"))
    plan = prepare_method(sam, "tiny-s", settings)
    acache = ActivationCache(pack.cache.root)
    precompute_activations(
        acache, sam, plan, identity, [s.image for s in samples], [s.image_hash() for s in samples]
    )
    source = CachedActivations(acache, plan.start_name)
    cfg = TrainConfig(n_train=8, epochs=2, batch_size=4, lr=1e-3, patience=0)
    scoring = Scoring(strategies=("center",), primary="center")
    out = specialise_with_method(sam, plan, pack, source, cfg, scoring, _cpu())
    r = out.train
    assert isinstance(r, MethodTrainResult) and r.steps == 4 and len(r.history) == 2
    assert any("lora_B" in k for k in r.tuned) and r.health_tag != "unchanged"
    assert any(float(v.abs().sum()) > 0 for k, v in r.tuned.items() if "lora_B" in k)
    assert 0.0 <= out.scores.test["center"].miou <= 1.0
    assert not any(p.requires_grad for p in sam.parameters())


# ------------------------------------------------------------------------------ export


def test_tiny_export_round_trips_through_our_loader_and_adapter_file(tmp_path):
    sam = random_model("tiny-s", seed=5)
    settings = MethodSettings("lora", rank=2, targets=("q", "v", "mlp", "conv"))
    prepare_method(sam, "tiny-s", settings)
    randomise_adapters(sam)
    x = batch_input(sam, images(1))
    with torch.no_grad():
        want = sam.image_encoder(x)
    full, dec, lora_file = export_tuned(sam, tmp_path, "tuned", settings_record(settings))
    loaded, _ = load_model("tiny-s", checkpoint=full, allow_unverified=True)
    base = random_model("tiny-s", seed=5)
    plan = load_adapters(base, "tiny-s", lora_file)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(x), want, atol=2e-5, rtol=1e-4)
        assert torch.equal(base.image_encoder(x), want)
    assert plan.settings == settings and adapter_state_dict(base).keys() == adapter_state_dict(sam).keys()
    assert set(torch.load(dec, weights_only=True)) == {
        k for k in loaded.state_dict() if k.startswith(("prompt_encoder.", "mask_decoder."))
    }


@pytest.mark.parametrize("name", ["vit_b", "vit_t"])
def test_export_loads_with_the_official_builders(name, tmp_path, vit_t):
    sam = vit_t if name == "vit_t" else load_model("vit_b", random_init=True, seed=0)[0]
    state = {k: v.clone() for k, v in sam.state_dict().items()} if name == "vit_t" else None
    plan = prepare_method(sam, name, MethodSettings("lora", blocks=2, rank=2, targets=("q", "v", "mlp")))
    randomise_adapters(sam)
    full, _, lora_file = export_tuned(sam, tmp_path, "x", settings_record(plan.settings))
    assert lora_file is not None and lora_file.stat().st_size < full.stat().st_size / 20
    if name == "vit_t":
        from specialsam.models.registry import _mobile_sam_vit_t

        theirs = _mobile_sam_vit_t()(checkpoint=str(full))
    else:
        from segment_anything import sam_model_registry

        theirs = sam_model_registry["vit_b"](checkpoint=str(full))
    ours = merge_lora(sam).state_dict()
    got = theirs.state_dict()
    assert got.keys() == ours.keys()
    changed = [k for k in ours if not torch.equal(got[k], (state or {}).get(k, got[k]))]
    assert all(torch.equal(got[k], ours[k]) for k in ours)
    if state is not None:
        assert changed and all(".attn.qkv.weight" in k or ".mlp.fc" in k for k in changed)
        sam.load_state_dict(state)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "model,settings,words",
    [
        ("vit_b", MethodSettings("lora", rank=0), "rank must be a whole number >= 1"),
        (
            "vit_b",
            MethodSettings("lora", blocks=13),
            "has 12 blocks; the tuned blocks L (method.blocks) must be in [1, 12], got 13",
        ),
        ("vit_b", MethodSettings("full", blocks=0), "must be in [1, 12], got 0"),
        (
            "vit_b",
            MethodSettings("lora", targets=("q", "conv")),
            "target 'conv' (method.targets) is not in vit_b's last 12",
        ),
        ("tiny-m", MethodSettings("lora", blocks=1, targets=("conv",)), "targets there: q, k, v, proj, mlp"),
        ("tiny-s", MethodSettings("adapter"), "unknown fine-tuning method 'adapter'"),
        ("vit_b", MethodSettings("lora", alpha=0.0), "alpha must be > 0"),
    ],
)
def test_bad_method_settings_are_one_line_errors(model, settings, words):
    with pytest.raises(UserError) as exc:
        validate_method(model, settings)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_tuning_an_encoder_the_model_does_not_have_is_refused(method):
    sam = build_headless("tiny-s")
    with pytest.raises(UserError) as exc:
        prepare_method(sam, "tiny-s", MethodSettings(method))
    assert "encoder is missing" in str(exc.value) and "method decoder" in str(exc.value)
    assert prepare_method(sam, "tiny-s", MethodSettings("decoder")).params  # decoder-only needs none


def _v_part(family: str, attn, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v part, q and k parts) of a fused projection output, split as the model's forward splits it."""
    if family == "tiny_vit":
        q, k, v = y.view(1, 1, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=3)
        return v, torch.cat([q, k])
    q, k, v = y.reshape(1, 3, -1).unbind(1)  # SAM ViT's qkv and nn.MultiheadAttention's in_proj
    return v, torch.cat([q, k])


@pytest.mark.parametrize("name", ["tiny-s", "small-vit", "vit_t"])
def test_a_v_adapter_changes_exactly_the_values_the_attention_reads_as_v(name, vit_t):
    sam = {"small-vit": small_vit_sam, "vit_t": lambda: vit_t}.get(name, lambda: random_model(name))()
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    plan = prepare_method(sam, name, MethodSettings("lora", blocks=1, targets=("v",)))
    blk = plan.steps[plan.start].owns[0]
    attn = blk.attn
    mod, param = (attn, "in_proj_weight") if name.startswith("tiny-") else (attn.qkv, "weight")
    x = torch.randn(1, getattr(mod, param).shape[1])
    with torch.no_grad():
        base = x @ getattr(mod, param).T
        randomise_adapters(sam)
        diff = x @ getattr(mod, param).T - base
    v, qk = _v_part(plan.family, attn, diff)
    assert v.abs().min() > 0 and torch.equal(qk, torch.zeros_like(qk))
    merge_lora(sam)
    sam.load_state_dict(state)


def test_methods_benchmark_smoke(tmp_path):
    """The benchmark runs and reports every variant (speed itself is never asserted: shared CI)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "methods.py"
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    got = {(r["method"], r["feed"]) for r in rows}
    assert got == {
        ("decoder", "cached"),
        ("lora", "cached"),
        ("lora", "naive"),
        ("full", "cached"),
        ("full", "naive"),
    }
    assert all(r["samples_per_s"] > 0 and r["cache_bytes_per_image"] > 0 for r in rows)
    by = {(r["method"], r["feed"]): r for r in rows}
    assert by[("lora", "cached")]["cache_bytes_per_image"] == 128 * 16 * 16 * 2  # tiny-s: stage3's input
    assert by[("lora", "cached")]["trainable_params"] < by[("full", "cached")]["trainable_params"]
    assert by[("lora", "cached")]["cached_vs_naive"] > 0 and "| cached / naive |" in proc.stdout


def test_plan_feed_needs_no_weights():
    from specialsam.finetune.activations import plan_feed

    tiny = plan_feed("tiny-m", MethodSettings("lora", blocks=1), 1000)
    assert tiny.mode == "cache" and tiny.bytes_per_image == 256 * 192 * 2  # 16x16 tokens x 192
    assert plan_feed("vit_h", MethodSettings("full", blocks=32), 8389).mode == "frozen"
    with pytest.raises(UserError):
        plan_feed("vit_b", MethodSettings("lora", rank=0), 10)
