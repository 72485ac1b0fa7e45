"""The method axis in a sweep (#23): arms through phases A/B, encoder-tuning trials, report, export.

One shared smoke sweep (carpet stand-in, tiny-s, methods decoder + lora + full, a short search);
the frozen-head fallback is checked without Ray against the cached path; bad method settings are
one-line errors before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specialsam.arms import arm_name, split_arm
from specialsam.finetune.activations import (
    ActivationCache,
    CachedActivations,
    FrozenHead,
    ImageLookup,
    fill_activations,
    head_plan,
    split_images,
)
from specialsam.finetune.encoder_train import train_with_method
from specialsam.finetune.methods import MethodSettings, prepare_method
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity, pack_splits
from specialsam.finetune.train import TrainConfig
from specialsam.models.registry import load_model, random_model
from tests.conftest import run_sweep_cli, scene_task
from tests.test_cli_errors import _fails

METHODS_SETS = ["--methods", "decoder,lora,full", "--set", "search.num_samples=2", "--set", "curve.seeds=[0]"]


def test_arm_labels_round_trip():
    assert arm_name("tiny-s", "decoder") == "tiny-s"
    assert split_arm(arm_name("vit_b", "lora")) == ("vit_b", "lora")
    assert split_arm("tiny-m") == ("tiny-m", "decoder")


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--methods", "decoder,lorra"], "unknown method 'lorra' (did you mean 'lora'?)"),
        (["--methods", "lora", "--set", "method.ranks=[0]"], "LoRA rank must be >= 1"),
        (["--methods", "full", "--set", "method.blocks=5"], "method.blocks"),
        (
            ["--methods", "lora", "--set", "method.blocks=1", "--set", "method.targets=[conv]"],
            "method.targets",
        ),
        (["--methods", "lora", "--set", "method.targets=[qq]"], "unknown LoRA target 'qq'"),
        (["--methods", "lora", "--set", "method.rank=3"], "method.rank 3 must be one of method.ranks"),
    ],
)
def test_bad_method_settings_fail_before_anything_is_written(argv, words, tmp_path, capsys):
    _fails(["--task", "carpet", "--smoke", *argv], tmp_path, capsys, words)


def test_plan_names_each_arm_its_parameters_and_cache(tmp_path, capsys, cache_dir):
    rc = run_sweep_cli(["--task", "carpet", "--smoke", *METHODS_SETS, "--plan"], tmp_path)
    out = capsys.readouterr().out
    assert rc == 0
    assert "phase A (tune) 6" in out  # 3 arms x 2 trials
    assert "tiny-s:lora: 193,340 trainable parameters; activation cache" in out
    assert "tiny-s:full: 697,276 trainable parameters" in out
    rc = run_sweep_cli(
        ["--task", "carpet", "--smoke", *METHODS_SETS, "--set", "method.cache_budget_gib=0", "--plan"],
        tmp_path,
    )
    assert "the frozen encoder blocks run under no_grad" in capsys.readouterr().out
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------ fallback
def test_frozen_head_fallback_trains_as_the_activation_cache(tmp_path):
    """The fallback runs the frozen blocks in every step from the images; the cache stores their
    output once in fp16: the same training within fp16 rounding."""
    base = random_model("tiny-s", seed=0)
    identity = model_identity(base, "tiny-s", "random-init")
    task = scene_task(8, 4, 4)
    pack = Pack(build_pack(task, base, identity, EmbeddingCacheAt(tmp_path), PackSettings(), progress=False))
    splits = pack_splits(task, PackSettings(), [])
    acache = ActivationCache(tmp_path)
    ran = fill_activations(acache, base, head_plan(base, "tiny-s", None), identity, splits)
    assert ran == len(split_images(splits, identity)[0])
    assert fill_activations(acache, base, head_plan(base, "tiny-s", None), identity, splits) == 0  # cached

    def trained(feed: str):
        sam = random_model("tiny-s", seed=0)
        plan = prepare_method(sam, "tiny-s", MethodSettings("full"))
        if feed == "cache":
            source = CachedActivations(acache, plan.start_name)
        else:
            sources, _, keys = split_images(splits, identity)
            source = FrozenHead(sam, plan, ImageLookup(dict(zip(keys, sources))))
        cfg = TrainConfig(n_train=8, epochs=2, batch_size=4, lr=1e-3, patience=0)
        return train_with_method(sam, plan, pack, source, cfg)

    cached, frozen = trained("cache"), trained("frozen")
    assert cached.steps == frozen.steps == 4
    for a, b in zip(cached.history, frozen.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=2e-3)
    assert cached.best_val_miou == pytest.approx(frozen.best_val_miou, abs=2e-2)
    moved = [k for k in cached.tuned if "image_encoder" in k]
    assert moved and any(not torch.equal(cached.tuned[k], frozen.tuned[k]) for k in moved)  # not one path


def EmbeddingCacheAt(root):
    from specialsam.finetune.cache import EmbeddingCache

    return EmbeddingCache(root)


# ------------------------------------------------------------------------------ the sweep
@pytest.fixture(scope="module")
def methods_sweep(ray_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_sweep_cli(["--task", "carpet", "--smoke", *METHODS_SETS, "--cache-dir", str(d / "cache")], d)
    print(out.getvalue())
    assert rc == 0
    return {"dir": d, "uri": f"sqlite:///{d / 'mlflow.db'}", "stdout": out.getvalue()}


def _client(uri):
    import mlflow

    return mlflow.tracking.MlflowClient(uri)


def _parent(client, task: str = "carpet"):
    exp = client.get_experiment_by_name(f"specialsam-{task}")
    (run,) = client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'sweep'")
    return exp, run


def test_each_arm_is_tuned_drawn_and_judged(methods_sweep):
    client = _client(methods_sweep["uri"])
    exp, parent = _parent(client)
    trials = client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'trial'", max_results=500)
    arms = {(r.data.params["model"], r.data.params["method"]) for r in trials}
    assert arms == {("tiny-s", "decoder"), ("tiny-s:lora", "lora"), ("tiny-s:full", "full")}
    for arm in ("tiny-s", "tiny-s:lora", "tiny-s:full"):
        mine = [r for r in trials if r.data.params["model"] == arm]
        assert len(mine) == 2 + 2  # phase A (2 trials) + phase B (2 sizes x 1 seed)
    assert all("rank" in r.data.params for r in trials if r.data.params["method"] == "lora")
    stdout = methods_sweep["stdout"]
    assert "phase A (tune) tiny-s:lora: 2 trials" in stdout and "activation cache" in stdout
    tags = parent.data.tags
    assert tags["specialsam.recommended_method"] in ("decoder", "lora", "full")
    assert {f"specialsam.verdict.baseline_rule.method.{m}" for m in ("decoder", "lora", "full")} <= set(tags)


def test_records_carry_the_method_and_its_cost(methods_sweep):
    client = _client(methods_sweep["uri"])
    exp, _ = _parent(client)
    records = {}
    for r in client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'trial'", max_results=500):
        if r.info.status == "FINISHED" and "test_miou.center" in r.data.metrics:
            path = client.download_artifacts(
                r.info.run_id, "result.json", str(methods_sweep["dir"] / r.info.run_id)
            )
            records[r.data.params["model"]] = json.loads(open(path).read())
    dec, lora, full = records["tiny-s"], records["tiny-s:lora"], records["tiny-s:full"]
    assert (
        dec["method"] is None
        and lora["method"]["method"] == "lora"
        and lora["method"]["targets"] == ["q", "v"]
    )
    assert dec["trainable_params"] < lora["trainable_params"] < full["trainable_params"]
    assert dec["cache_bytes_per_image"] == 64 * 16 * 16 * 2  # fp16 embeddings
    assert lora["cache_bytes_per_image"] == full["cache_bytes_per_image"] > 0  # same L, same activations


def test_report_has_the_method_table(methods_sweep):
    client = _client(methods_sweep["uri"])
    _, parent = _parent(client)
    path = client.download_artifacts(
        parent.info.run_id, "rules/report.md", str(methods_sweep["dir"] / "report")
    )
    text = open(path).read()
    assert "## Which way to fine-tune (method)" in text
    for m in ("decoder", "lora", "full"):
        assert f"| {m} | " in text
    assert "pick: " in text


def test_export_is_the_recommended_arm_in_the_official_layout(methods_sweep):
    client = _client(methods_sweep["uri"])
    _, parent = _parent(client)
    tags = parent.data.tags
    method = tags["specialsam.recommended_method"]
    full_path = tags["specialsam.export.full"]
    tuned, _ = load_model("tiny-s", checkpoint=full_path, allow_unverified=True)
    base, _ = load_model("tiny-s")
    enc = [k for k in base.state_dict() if k.startswith("image_encoder.")]
    changed = [k for k in enc if not torch.equal(base.state_dict()[k], tuned.state_dict()[k])]
    if method == "decoder":
        assert not changed
    else:
        assert changed  # the tuned encoder, merged into plain weights (no adapter keys)
        assert not any("lora" in k or "parametrizations" in k for k in tuned.state_dict())
    adapters = Path(full_path.replace(".pth", "-lora.pt"))
    assert adapters.exists() == (method == "lora")


def test_analyze_only_rebuilds_the_method_verdicts(methods_sweep, capsys):
    client = _client(methods_sweep["uri"])
    _, parent = _parent(client)
    before = {k: v for k, v in parent.data.tags.items() if k.startswith("specialsam.verdict")}
    rc = run_sweep_cli(
        ["--task", "carpet", "--smoke", *METHODS_SETS, "--analyze-only", parent.info.run_id],
        methods_sweep["dir"],
    )
    assert rc == 0
    after = client.get_run(parent.info.run_id).data.tags
    assert {k: after[k] for k in before} == before
    assert "tiny-s:full" in capsys.readouterr().out


def _folder_dataset(root, n: int = 30) -> None:
    """An images/masks folder: a red box to find on noise."""
    from specialsam.tasks.io import write_image, write_mask

    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(60, 200, (96, 128, 3), dtype=np.uint8)
        y, x = rng.integers(10, 50), rng.integers(10, 70)
        img[y : y + 30, x : x + 40] = [200, 40, 40]
        mask = np.zeros((96, 128), bool)
        mask[y : y + 30, x : x + 40] = True
        write_image(root / "images" / f"im{i:03d}.jpg", img)
        write_mask(root / "masks" / f"im{i:03d}.png", mask)


def test_a_sweep_over_the_cache_budget_runs_the_frozen_blocks_in_its_trials(ray_cluster, tmp_path, capsys):
    """``method.cache_budget_gib: 0``: no activation cache; the trials read the images themselves,
    from real files given by relative paths (data and cache), though Tune runs trials in other
    working folders."""
    _folder_dataset(tmp_path / "data")
    argv = ["--task", "folder", "--data-root", "data", "--cache-dir", "cache", "--models", "tiny-s"]
    argv += ["--methods", "full", "--set", "method.cache_budget_gib=0", "--set", "train.epochs=1"]
    for setting in ("search.num_samples=1", "search.n_train=16", "curve.n_train=[16]", "curve.seeds=[0]"):
        argv += ["--set", setting]
    assert run_sweep_cli(argv, tmp_path) == 0
    assert "the frozen encoder blocks run under no_grad in every step instead" in capsys.readouterr().out
    assert (tmp_path / "cache" / "packs").is_dir()  # the relative cache is where the user said
    assert not (tmp_path / "cache" / "activations").exists()
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp, _ = _parent(client, "folder")
    runs = client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    path = client.download_artifacts(runs[0].info.run_id, "result.json", str(tmp_path))
    rec = json.loads(open(path).read())
    assert rec["method"]["method"] == "full" and rec["cache_bytes_per_image"] == 0
