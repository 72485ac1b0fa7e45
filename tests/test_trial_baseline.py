"""`python -m specialsam.trial --baseline-only`: the zero-shot figure the baseline rule reads,
from the test sets alone (no training samples encoded, nothing trained)."""

from __future__ import annotations

import json
import re

from specialsam.finetune.evaluate import score_split
from specialsam.finetune.pack import PackSettings
from specialsam.trial import main, prepare_pack

CAMO = {"procedural_train": 20, "procedural_test": 10}


def _table(out: str) -> dict[str, list[str]]:
    return {m[1]: m[2].split() for m in re.finditer(r"^(center|box)\s+(.*)$", out, re.M)}


def test_baseline_only_scores_test_sets_without_training(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = [
        "--task",
        "camouflage",
        "--model",
        "tiny-s",
        "--strategies",
        "center,box",
        "--cache-dir",
        str(cache),
    ]
    sets = [f"--set={k}={v}" for k, v in CAMO.items()]
    main([*args, *sets, "--n-train", "100000", "--baseline-only"])  # training settings cannot fail it
    out = capsys.readouterr().out
    assert "trained" not in out  # stopped before training
    head = next(line for line in out.splitlines() if line.startswith("prompt"))
    assert head.split() == ["prompt", "test", "(10)", "procedural-transfer", "(10)"]
    rows = _table(out)
    assert rows["box"][1] == "-"  # the transfer set carries the primary strategy's prompts only
    # only the test sets were encoded: 10 + 10 images, no train/val
    (manifest,) = [json.loads(p.read_text()) for p in cache.glob("packs/*/manifest.json")]
    assert manifest["n_train_pool"] == 0 and not manifest["splits"]["val"]["keys"]
    assert len(manifest["splits"]["test"]["keys"]) == 10
    # the same figures as the full pack (train/val encoded too) gives: the test sets do not
    # depend on the training pool, so the quick figure is the sweep's baseline
    _, sam, _, pack = prepare_pack(
        "camouflage",
        "tiny-s",
        None,
        CAMO,
        settings=PackSettings(strategies=("center", "box")),
        cache_dir=tmp_path / "full",
        retention=0,
    )
    assert pack.n_train_pool > 0
    full = score_split(sam, pack.split("test"), ["center", "box"])
    assert rows["center"][0] == f"{full['center'].miou:.4f}" and rows["box"][0] == f"{full['box'].miou:.4f}"
    transfer = score_split(sam, pack.split("extra-procedural-transfer"), ["center"])
    assert rows["center"][1] == f"{transfer['center'].miou:.4f}"
    rule = "helps" if full["center"].miou < 0.75 else "does not help"
    assert f"-> the rule predicts fine-tuning {rule}" in out


def test_baseline_only_reads_the_user_checkpoint(tmp_path, capsys):
    """--checkpoint is honoured: a randomly initialised tiny-s scores far below the shipped one."""
    import torch

    from specialsam.models.registry import load_model

    sam, _ = load_model("tiny-s", random_init=True)
    torch.save(sam.state_dict(), tmp_path / "random.pt")
    base = [
        "--task",
        "camouflage",
        "--model",
        "tiny-s",
        "--strategies",
        "center",
        "--cache-dir",
        str(tmp_path),
    ]
    sets = [f"--set={k}={v}" for k, v in CAMO.items()]
    main([*base, *sets, "--baseline-only"])
    shipped = float(_table(capsys.readouterr().out)["center"][0])
    main([*base, *sets, "--baseline-only", "--checkpoint", str(tmp_path / "random.pt"), "--allow-unverified"])
    random = float(_table(capsys.readouterr().out)["center"][0])
    assert shipped > random + 0.2, (shipped, random)
