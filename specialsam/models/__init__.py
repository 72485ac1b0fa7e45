"""Models: the registry (tiny-s, tiny-m, vit_t, vit_b, vit_l, vit_h), checkpoints, SAM's building
blocks for batched decoding, inference and export. ``from specialsam.models import load_model`` is
the public entry."""

from specialsam.models.registry import (
    MODEL_NAMES,
    WEIGHTS_DIR,
    ModelInfo,
    ModelSpec,
    get_spec,
    load_model,
    random_model,
    save_official,
)

__all__ = [
    "MODEL_NAMES",
    "WEIGHTS_DIR",
    "ModelInfo",
    "ModelSpec",
    "get_spec",
    "load_model",
    "random_model",
    "save_official",
]
