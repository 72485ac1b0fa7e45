"""The method axis and its *arms*: one (model, fine-tuning method) pair, one label.

A sweep tunes, draws the learning curve of, and judges each arm on its own, so the sweep, the
analysis and the report key everything by the arm's label, as they did by model name when every
arm was decoder-only. A decoder-only arm keeps the bare model name (``tiny-s``: its runs, tags
and report rows read as before); the others are ``<model>:<method>`` (``tiny-s:lora``: MLflow
names allow a colon, not a plus).
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("decoder", "lora", "full")
"""Fine-tuning methods, cheapest first (trainable parameters and seconds per step grow in this
order: benchmarks/README.md, ``methods.py``); the recommendation's tie-break order."""
SEP = ":"


def arm_name(model: str, method: str) -> str:
    """The label of ``model`` fine-tuned by ``method``."""
    return model if method == "decoder" else f"{model}{SEP}{method}"


def split_arm(arm: str) -> tuple[str, str]:
    """``arm_name``'s inverse: (model, method)."""
    model, _, method = arm.partition(SEP)
    return model, method or "decoder"


def arm_model(arm: str) -> str:
    return split_arm(arm)[0]


def arm_method(arm: str) -> str:
    return split_arm(arm)[1]
