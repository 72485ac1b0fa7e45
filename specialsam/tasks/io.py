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

**Pixel limit.** Before anything is decoded, the width and height are read from the file's header
(Pillow, lazily: no pixel data) and a file above ``max_pixels`` (every task's ``data.max_pixels``,
default :data:`DEFAULT_MAX_PIXELS` = 100,000,000, i.e. 100 MP such as 10,000 x 10,000) is refused
with a one-line error naming it. A small file can claim a huge size (a "decompression bomb": an
875 KB PNG claiming 30,000 x 30,000 made the decoder allocate 6 GB); ``null`` lifts our limit
(OpenCV's own cap of 2^30 pixels still applies).

**Quiet failures.** OpenCV and libpng print their own warnings to stderr when a file is corrupt
or truncated; those are captured during the decode, and a failure becomes our one line (with the
decoder's first message in it). What a successful decode prints is passed on unchanged.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from specialsam.errors import UserError
from specialsam.tasks.base import ImageSource, MaskSource, Sample, pixel_hash

DEFAULT_MAX_PIXELS: int = 100_000_000
"""Largest image (width x height) any task decodes unless its ``data.max_pixels`` says otherwise."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Lower-case file suffixes treated as images when listing folders."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (empty if it does not exist).

    A folder that exists but cannot be listed (permissions) is a one-line error, not a traceback."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    try:
        return sorted(p for p in folder.iterdir() if is_image_file(p))
    except OSError as exc:
        raise UserError(
            f"cannot list folder {folder}: {exc.strerror or exc}; check its permissions"
        ) from None


_PIL_LOCK = threading.Lock()


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, or None when Pillow cannot tell (then the
    decoder decides). Pillow's own bomb guard is off here: the caller applies ``max_pixels``."""
    with _PIL_LOCK:
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                w, h = im.size
            return int(w), int(h)
        except Exception:  # not an image Pillow knows, unreadable, corrupt header: cv2 has the last word
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = guard


def check_pixels(path: Path, what: str, max_pixels: int | None) -> None:
    """Refuse a file whose header claims more than ``max_pixels`` pixels, before it is decoded."""
    if max_pixels is None:
        return
    size = image_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise UserError(
            f"{what} file {path} is {w}x{h} pixels ({w * h / 1e6:,.0f} MP), above data.max_pixels="
            f"{max_pixels:,}; downscale or remove it, or raise data.max_pixels"
        )


def check_max_pixels(value: object, task: str) -> None:
    """``data.max_pixels`` must be a positive integer, or null for no limit of ours."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise UserError(
            f"data.max_pixels={value!r} for task {task}; use a positive pixel count "
            f"(default {DEFAULT_MAX_PIXELS:,}) or null for no limit"
        )


_STDERR_LOCK = threading.Lock()
_sink: tuple[int, object] | None = None  # (pid, temporary file): one per process, forks included
_CV_LOG_PREFIX = re.compile(r"^\[\s*\w+:[^\]]*\]\s*(global\s+)?\S+:\d+\s+\S+\s+")


def _stderr_file():
    global _sink
    if _sink is None or _sink[0] != os.getpid():
        _sink = (os.getpid(), tempfile.TemporaryFile())
    return _sink[1]


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what native code (libpng, OpenCV's log) writes to file descriptor 2 meanwhile;
    the list holds it afterwards. Python's own ``sys.stderr`` object is untouched."""
    out: list[str] = []
    with _STDERR_LOCK:
        try:
            sink = _stderr_file()
            sink.seek(0)
            sink.truncate()
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to capture
            yield out
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out.append(sink.read().decode("utf-8", "replace"))


def _first_line(text: str) -> str:
    """The decoder's first message, without OpenCV's ``[ WARN:0@0.1] global file.cpp:12 func`` head."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _CV_LOG_PREFIX.sub("", line)


def _decode(path: Path, flags: int, what: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist; check the dataset folder")
    check_pixels(path, what, max_pixels)
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(
            f"cannot read {what} file {path}: {exc.strerror or exc}; check its permissions"
        ) from None
    arr, said = None, "empty file"
    if buf.size:
        with _captured_stderr() as printed:
            try:
                arr = cv2.imdecode(buf, flags)
            except cv2.error as exc:  # e.g. above OpenCV's own 2^30-pixel cap
                printed.append(str(exc).split("error: ", 1)[-1])
        said = "".join(printed)
        if arr is not None and arr.size and said:
            os.write(2, said.encode())  # a successful decode's warnings stay the user's to see
    if arr is None or arr.size == 0:
        why = _first_line(said)
        raise UserError(
            f"cannot read {what} file {path}: not a readable image"
            + (f" ({why})" if why else "")
            + "; remove or replace it"
        )
    return arr


def read_image(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8 RGB. Grayscale files become 3 equal channels, alpha is dropped, 16-bit
    files are reduced to 8 bits. A file above ``max_pixels`` is refused before decoding."""
    arr = _decode(Path(path), cv2.IMREAD_COLOR, "image", max_pixels)
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
    path: Path | str,
    expected_hw: tuple[int, int] | None = None,
    image_path: Path | str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """H x W bool mask. With ``expected_hw`` (the image's height, width) a size mismatch is a
    ``UserError`` naming the mask, both sizes and (when given) the image file."""
    path = Path(path)
    mask = binarize_mask(_decode(path, cv2.IMREAD_UNCHANGED, "mask", max_pixels))
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


def _file_pixels(path: Path, max_pixels: int | None, max_side: int | None) -> np.ndarray:
    return resize_image(read_image(path, max_pixels), max_side)


def _file_mask(path: Path, max_pixels: int | None, max_side: int | None) -> np.ndarray:
    return resize_mask(read_mask(path, max_pixels=max_pixels), max_side)


def streamed_pair(
    key: str,
    image_path: Path,
    mask_path: Path,
    category: str = "",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    keep_empty: bool = False,
) -> Sample | None:
    """A sample backed by an image file and its mask file: read once here (sizes checked, empty
    mask -> None unless ``keep_empty``, the downscaled image's content hash taken) and let go;
    pixels and mask are decoded again where needed, so a task's memory does not grow with it."""
    image = read_image(image_path, max_pixels)
    mask = read_mask(mask_path, image.shape[:2], image_path, max_pixels)
    if not mask.any() and not keep_empty:
        return None
    digest = pixel_hash(resize_image(image, max_side))
    del image, mask
    return Sample(
        key,
        ImageSource(partial(_file_pixels, Path(image_path), max_pixels, max_side), digest),
        MaskSource(partial(_file_mask, Path(mask_path), max_pixels, max_side)),
        category,
    )


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
