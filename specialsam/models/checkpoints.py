"""Checkpoint files: hashing, the verified-hash record, safe loading, shape checks, atomic writes and
downloads. Model-agnostic; ``specialsam.models.registry`` decides what a given model name expects.

The record of verified files is a small JSON next to the checkpoints (``.specialsam-verified.json``),
keyed by file name, holding each file's SHA-256 with the size, mtime and inode it had when verified.
A file whose size, mtime and inode still match is trusted without re-hashing (the cheap path: hashing
vit_h's 2.5 GB costs seconds on every trial start; atomic rewrites always get a new inode, so even a
coarse-mtime filesystem cannot hide a replaced file); a file that changed is hashed again and must match.
Writing the record is best effort: on a read-only checkpoint folder files are simply hashed each time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from specialsam.errors import UserError

RECORD_NAME = ".specialsam-verified.json"
_CHUNK = 1 << 23  # 8 MiB
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Hashes:
    md5: str
    sha256: str


def file_hashes(path: Path) -> Hashes:
    """MD5 and SHA-256 of a file, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            md5.update(block)
            sha.update(block)
    return Hashes(md5.hexdigest(), sha.hexdigest())


def normalise_sha256(value: str) -> str:
    v = value.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.match(v):
        raise UserError(f"expected SHA-256 {value!r} is not 64 hex digits")
    return v


# ---------------------------------------------------------------------------------------------
# The record of verified files
# ---------------------------------------------------------------------------------------------


def record_path(checkpoint: Path) -> Path:
    return checkpoint.parent / RECORD_NAME


def _read_records(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # absent or unreadable: nothing recorded, files get hashed


def read_record(checkpoint: Path) -> dict | None:
    """The record entry of ``checkpoint`` ({sha256, size, mtime_ns, ...}) or None."""
    entry = _read_records(record_path(checkpoint)).get(checkpoint.name)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry
    return None


def stat_matches(entry: Mapping, checkpoint: Path) -> bool:
    st = checkpoint.stat()
    return (entry.get("size"), entry.get("mtime_ns"), entry.get("inode")) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )


def write_record(checkpoint: Path, sha256: str, model: str, verified_by: str) -> bool:
    """Record ``checkpoint`` as verified (atomic replace; best effort). Returns whether it was written."""
    rec = record_path(checkpoint)
    try:
        st = checkpoint.stat()
        files = _read_records(rec)
        files[checkpoint.name] = {
            "sha256": sha256,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino,
            "model": model,
            "verified_by": verified_by,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(dir=rec.parent, prefix=f"{RECORD_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, rec)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
    except OSError:
        return False  # read-only folder: fine, the file is hashed again next time


# ---------------------------------------------------------------------------------------------
# Reading and checking state dicts
# ---------------------------------------------------------------------------------------------


def _looks_like_torch_file(path: Path) -> bool:
    """Zip container (torch >= 1.6) or a legacy pickle stream (starts with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_state_dict(path: Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a state dict, with one-line errors for every bad file.

    Also accepts the two wrappers training scripts commonly write: {"model"|"state_dict": sd} and
    keys prefixed "module." by DistributedDataParallel. ``label`` names the file in messages.
    """
    name = label or str(path)
    if path.stat().st_size == 0:
        raise UserError(f"{name} is empty (an interrupted download or copy?)")
    not_torch = f"{name} is not a PyTorch checkpoint (corrupt or truncated)"
    if not _looks_like_torch_file(path):
        raise UserError(not_torch)
    try:
        with warnings.catch_warnings():  # torch's note on odd pickle protocols: we say it better below
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol \d+", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/... for bad files
        found = re.search(r"unsupported GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if found:
            raise UserError(
                f"{name} holds Python objects, not just tensors (found {found.group(1)}); it is not "
                "unpickled for safety — re-save only the weights: torch.save(model.state_dict(), path)"
            ) from None
        raise UserError(not_torch) from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{name} does not hold a state_dict: found a {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [
            obj[k] for k in ("model", "state_dict", "model_state_dict") if isinstance(obj.get(k), Mapping)
        ]
        if len(inner) == 1 and inner[0] and all(isinstance(v, torch.Tensor) for v in inner[0].values()):
            obj = inner[0]
        else:
            keys = ", ".join(sorted(map(str, obj))[:6])
            raise UserError(f"{name} does not hold a state_dict of tensors: found a dict with keys {keys}")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _fmt_shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_state_dict(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: Path | str,
    name: str,
    looks_like: str | None,
) -> None:
    """Raise a one-line UserError unless ``sd`` has exactly the keys and shapes of ``expected``."""
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if not (wrong or missing or unexpected):
        return
    parts = []
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else ""
        parts.append(f"{k} has shape {_fmt_shape(sd[k].shape)}, expected {_fmt_shape(expected[k])}{more}")
    if missing:
        parts.append(f"{len(missing)} tensors are missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} are unexpected (e.g. {unexpected[0]})")
    detail = "; ".join(parts)
    hint = f" — it looks like {looks_like}" if looks_like and looks_like != name else ""
    raise UserError(f"{path} is not a {name} checkpoint: {detail}{hint}")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def atomic_torch_save(obj: object, path: Path) -> str:
    """``torch.save`` to a temp file in the same folder, then rename; returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        sha = file_hashes(Path(tmp)).sha256
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha


def portable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` on CPU, each tensor owning exactly its storage (no shared views)."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if v.untyped_storage().nbytes() != v.numel() * v.element_size() or not v.is_contiguous():
            v = v.clone(memory_format=torch.contiguous_format)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------


def fetch(
    url: str,
    dest: Path,
    verify: Callable[[Path, Hashes], object],
    progress: bool = True,
    timeout: float = 60.0,
) -> Hashes:
    """Stream ``url`` into a temp file next to ``dest``, ``verify(tmp, hashes)`` it, rename to ``dest``.

    ``verify`` raises UserError to reject the file; on any failure nothing is left behind.
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) URLs)
            except urllib.error.HTTPError as exc:
                raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise UserError(
                    f"could not reach {url} ({reason}); without internet, download it elsewhere "
                    f"and copy it to {dest}"
                ) from None
            with (
                resp,
                tqdm(
                    total=int(resp.headers.get("Content-Length") or 0) or None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                length, got = resp.headers.get("Content-Length"), 0
                try:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        md5.update(block)
                        sha.update(block)
                        got += len(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException) as exc:
                    raise UserError(f"download of {url} broke off after {got} bytes: {exc}") from None
                if length is not None and got != int(length):
                    raise UserError(f"download of {url} is truncated: got {got} of {length} bytes")
        hashes = Hashes(md5.hexdigest(), sha.hexdigest())
        verify(tmp, hashes)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashes
