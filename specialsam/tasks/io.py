"""Image and mask IO shared by every task.

Images come back as H x W x 3 uint8 RGB, masks as H x W bool, whatever the file's encoding.
Files are read through ``np.fromfile`` + ``cv2.imdecode`` so paths with non-ASCII characters
work on every platform. Every failure is a one-line ``UserError`` naming the file.

Mask encodings understood by ``read_mask`` (the first rule that applies wins):

* a mask whose largest value is 0 or 1 (0/1 label masks, any dtype): foreground is ``> 0``;
* 8-bit masks (0/255, possibly with JPEG or resampling grey levels): foreground is ``> 127``;
* 16-bit masks (0/65535): foreground is ``> 32767``;
* float masks: foreground is ``> 0.5`` (values above 1 are taken as 0..255 and use ``> 127``).

Colour masks (3 or 4 channels) are reduced to one channel by the maximum over the colour
channels (alpha ignored), so a pure red or green label counts as foreground.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from specialsam.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Lower-case file suffixes treated as images when listing folders."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (empty if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist; check the dataset folder")
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(
            f"cannot read {what} file {path}: {exc.strerror or exc}; check its permissions"
        ) from None
    arr = cv2.imdecode(buf, flags) if buf.size else None
    if arr is None or arr.size == 0:
        raise UserError(f"cannot read {what} file {path}: not a readable image; remove or replace it")
    return arr


def read_image(path: Path | str) -> np.ndarray:
    """H x W x 3 uint8 RGB. Grayscale files become 3 equal channels, alpha is dropped, 16-bit
    files are reduced to 8 bits."""
    arr = _decode(Path(path), cv2.IMREAD_COLOR, "image")
    return np.ascontiguousarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))


def binarize_mask(arr: np.ndarray) -> np.ndarray:
    """H x W bool from a decoded mask array (see the module docstring for the rules)."""
    if arr.ndim == 3:
        arr = arr[..., : min(arr.shape[2], 3)].max(axis=2)
    if arr.size == 0:
        return np.zeros(arr.shape, bool)
    top = arr.max()
    if top <= 1:
        return arr > 0
    if arr.dtype == np.uint16:
        return arr > 32767
    return arr > 127


def read_mask(
    path: Path | str, expected_hw: tuple[int, int] | None = None, image_path: Path | str | None = None
) -> np.ndarray:
    """H x W bool mask. With ``expected_hw`` (the image's height, width) a size mismatch is a
    ``UserError`` naming the mask, both sizes and (when given) the image file."""
    path = Path(path)
    mask = binarize_mask(_decode(path, cv2.IMREAD_UNCHANGED, "mask"))
    if expected_hw is not None and tuple(mask.shape[:2]) != tuple(expected_hw):
        mh, mw = mask.shape[:2]
        ih, iw = expected_hw
        of = f"its image {image_path}" if image_path is not None else "its image"
        raise UserError(
            f"mask {path} is {mw}x{mh} (WxH) but {of} is {iw}x{ih}; masks must match their image's size"
        )
    return mask


def _scaled_size(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    h, w = hw
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side``; area interpolation."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    h, w = _scaled_size(image.shape[:2], max_side)
    return np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))


def resize_mask(mask: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale a bool mask like ``resize_image`` but with nearest-neighbour sampling."""
    if max_side is None or max(mask.shape[:2]) <= max_side:
        return mask
    h, w = _scaled_size(mask.shape[:2], max_side)
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def resize_pair(image: np.ndarray, mask: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Optional downscaling of an image and its mask to the same size (area / nearest)."""
    return resize_image(image, max_side), resize_mask(mask, max_side)


def write_image(path: Path | str, image: np.ndarray) -> None:
    """Write an RGB (or grayscale) uint8 image; the suffix picks the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(path.suffix or ".png", arr)
    if not ok:
        raise UserError(f"cannot encode image for {path}; use a .png or .jpg file name")
    buf.tofile(str(path))


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Write a bool mask as a 0/255 8-bit image (the MVTec and COD10K convention)."""
    write_image(path, np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))
