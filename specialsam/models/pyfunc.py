"""The specialised model as an MLflow ``pyfunc``: an image and one prompt in, a binary mask out.

``mlflow.pyfunc.load_model("models:/specialsam-<task>@champion").predict(rows)`` and
``mlflow models serve`` call :class:`SpecialSamModel`, which runs the same preprocessing, decoding
and post-processing as the sweep's scoring (``models.inference``), so a served mask is the mask the
report measured. The sweep logs this file as the model's code (MLflow's "models from code": nothing is
pickled) with the checkpoint as an artifact, and registers it (``sweep.model_logging``); this module
only knows the model, not runs.

One row per image and prompt (pandas records, or ``{"dataframe_records": [...]}`` over HTTP):

* ``image``: H x W x 3 RGB values 0..255 (nested lists or a uint8 array);
* ``point``: ``[x, y]``, one foreground point, *or* ``box``: ``[x0, y0, x1, y1]``; original-image
  pixel coordinates (integers in the signature, so a typed ``[40, 25]`` passes MLflow's checks), as
  SAM's ``SamPredictor`` takes them.

Each output row has ``mask``: H x W of 0/1 at the image's own resolution.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

from specialsam.models.checkpoints import file_hashes
from specialsam.prompts import Prompt, box_prompt, points_prompt

CHECKPOINT = "checkpoint"
"""Artifact key of the full specialised checkpoint (official SAM key layout)."""
SETTINGS = "settings"
"""Artifact key of the JSON that says which model class and mask selection the checkpoint needs."""


def row_prompt(row: Mapping[str, Any]) -> Prompt:
    """The prompt of one input row: exactly one of ``point`` and ``box``."""
    point, box = _given(row.get("point")), _given(row.get("box"))
    if (point is None) == (box is None):
        raise ValueError("each row needs exactly one prompt: point [x, y] or box [x0, y0, x1, y1]")
    if point is not None:
        if point.shape != (2,):
            raise ValueError(f"point must be [x, y], got shape {point.shape}")
        return points_prompt(point)
    if box.shape != (4,):
        raise ValueError(f"box must be [x0, y0, x1, y1], got shape {box.shape}")
    return box_prompt(*(float(v) for v in box))


def _given(value: Any) -> np.ndarray | None:
    if value is None or (np.isscalar(value) and value != value):  # absent, or NaN from a sparse frame
        return None
    return np.asarray(value, np.float32).reshape(-1)


def row_image(value: Any) -> np.ndarray:
    """H x W x 3 uint8 from nested lists or an array (values are clipped to 0..255)."""
    img = np.asarray(value.tolist() if hasattr(value, "tolist") and value.dtype == object else value)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {img.shape}")
    return np.clip(img, 0, 255).astype(np.uint8)


def segment(sam, image: np.ndarray, prompt: Prompt, mask_selection: str) -> np.ndarray:
    """One mask (H x W bool) for one image and prompt, exactly as the sweep scores."""
    import torch

    from specialsam.models.inference import encode, predict_masks

    with torch.no_grad():
        emb = encode(sam, [image])
    return predict_masks(sam, emb, [prompt], [image.shape[:2]], mask_selection)[0]


class SpecialSamModel(mlflow.pyfunc.PythonModel):
    """A specialised SAM (base model with the sweep's fine-tuned decoder) behind ``predict``."""

    def load_context(self, context) -> None:
        from specialsam.models.registry import load_model

        settings = json.loads(Path(context.artifacts[SETTINGS]).read_text())
        path = Path(context.artifacts[CHECKPOINT])
        got = file_hashes(path).sha256
        if got != settings["sha256"]:
            raise ValueError(f"{path}: SHA-256 {got}, the logged model says {settings['sha256']}")
        # verified just above; no checkpoint record is written into the model's artifact folder
        self.sam, _ = load_model(settings["model"], checkpoint=path, allow_unverified=True)
        self.mask_selection = settings["mask_selection"]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = model_input.to_dict("records")
        masks = [
            segment(self.sam, row_image(r["image"]), row_prompt(r), self.mask_selection).astype(np.uint8)
            for r in rows
        ]
        return pd.DataFrame({"mask": [m.tolist() for m in masks]})


def settings_json(model: str, mask_selection: str, sha256: str) -> dict[str, str]:
    """What :data:`SETTINGS` holds."""
    return {"model": model, "mask_selection": mask_selection, "sha256": sha256}


mlflow.models.set_model(SpecialSamModel())
"""MLflow's "models from code": the model is this file (logged as code, never pickled)."""
