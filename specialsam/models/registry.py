"""The model registry: which SAM-architecture models exist, where their weights come from, and how they
are loaded and verified.

    tiny-s, tiny-m      our tiny generalists; weights ship inside the package (specialsam/weights)
    vit_t               MobileSAM (TinyViT encoder), code from the PyPI package mobilesam-mirror
    vit_b, vit_l, vit_h Meta's Segment Anything, code from the PyPI package segment-anything

    python -m specialsam.models list [--dir DIR]
    python -m specialsam.models download vit_b --dir DIR [--url URL] [--sha256 HEX]
    python -m specialsam.models check vit_b --dir DIR       # load + verify, print what was loaded

Checkpoints of the official models are looked up by their official file name in a folder
(``checkpoint_dir=`` / ``--checkpoint-dir`` / env ``SPECIALSAM_CHECKPOINTS``), or given as a file.

Integrity. Meta publishes no SHA-256, but each official SAM file name ends in the first six hex
digits of the file's MD5; the full MD5s below agree with those names and with the values many
download scripts use. MobileSAM publishes no hash at all: a file under its official name
``mobile_sam.pt`` is trusted on first use — provided it loads strictly as a vit_t — and its SHA-256
is recorded. Every verified file's SHA-256 is recorded in ``<folder>/.specialsam-verified.json``; later
loads check against the record (without re-hashing while size and mtime are unchanged). A user may
pin a hash (``sha256=``). Any other file — MedSAM, an in-house fine-tune, an official name whose hash
does not match — is loaded only with ``allow_unverified=True`` (``--allow-unverified``); it must still
load strictly, and its SHA-256 is still computed, since the embedding cache keys on it.
Loading always uses ``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specialsam.errors import UserError, cli_errors
from specialsam.models import checkpoints as ckpt
from specialsam.models.tiny import TINY_CONFIGS, build_tiny_sam

# The shipped tiny weights; specialsam.pretrain imports this folder and writes its weights here.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CHECKPOINTS_ENV = "SPECIALSAM_CHECKPOINTS"
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# MobileSAM's own repository (Apache-2.0), where its README points for the weights.
_MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"


@dataclass(frozen=True)
class ModelSpec:
    """What one model name means."""

    name: str
    family: str
    """"tiny" (shipped), "mobile_sam" or "sam"."""
    description: str
    image_size: int
    """Side of the square input the encoder takes."""
    embedding_shape: tuple[int, int, int]
    """(channels, height, width) of one image embedding."""
    params: int
    filename: str
    """Official checkpoint file name (tiny: the shipped file in specialsam/weights)."""
    url: str | None
    """Official download URL (None: ships with the package)."""
    md5: str | None = None
    """Full MD5 of the official file (SAM: its name ends in the first six digits)."""
    sha256: str | None = None
    """SHA-256 of the official file, where one is known."""
    license: str = "Apache-2.0"

    @property
    def shipped(self) -> bool:
        return self.family == "tiny"


def _tiny_spec(name: str, params: int, what: str) -> ModelSpec:
    cfg = TINY_CONFIGS[name]
    side = cfg.embedding_size
    return ModelSpec(
        name=name,
        family="tiny",
        description=f"tiny generalist, {what} (ours, offline default)",
        image_size=cfg.img_size,
        embedding_shape=(cfg.embed_dim, side, side),
        params=params,
        filename=f"{name}.pt",
        url=None,
    )


def _sam_spec(name: str, md5: str, params: int, what: str) -> ModelSpec:
    filename = f"sam_{name}_{md5[:6]}.pth"
    return ModelSpec(
        name=name,
        family="sam",
        description=f"Segment Anything, {what} encoder (Meta)",
        image_size=1024,
        embedding_shape=(256, 64, 64),
        params=params,
        filename=filename,
        url=_SAM_URL + filename,
        md5=md5,
    )


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _tiny_spec("tiny-s", 885_768, "small"),
        _tiny_spec("tiny-m", 2_141_000, "medium"),
        # MobileSAM: mobilesam-mirror packages the original repository's code; its licence file
        # (site-packages/mobilesam_mirror-*.dist-info/licenses/LICENSE) is Apache-2.0, like SAM's.
        ModelSpec(
            name="vit_t",
            family="mobile_sam",
            description="MobileSAM, TinyViT encoder",
            image_size=1024,
            embedding_shape=(256, 64, 64),
            params=10_130_092,
            filename="mobile_sam.pt",
            url=_MOBILE_SAM_URL,
        ),
        _sam_spec("vit_b", "01ec64d29a2fca3f0661936605ae66f8", 93_735_472, "ViT-B"),
        _sam_spec("vit_l", "0b3195507c641ddb6910d2bb5adee89c", 312_342_832, "ViT-L"),
        _sam_spec("vit_h", "4b8939a88964f0f4ff5f5b2642c598a6", 641_090_608, "ViT-H"),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded: goes into the embedding cache manifest and the MLflow tags."""

    name: str
    checkpoint: str
    """Absolute path of the weights file, or "shipped" / "random-init"."""
    sha256: str
    """SHA-256 of the weights file; "random-init-<seed>" for a random model."""
    image_size: int
    embedding_shape: tuple[int, int, int]
    verified: str
    """How the file was trusted: md5 | sha256 | recorded | first-use | shipped | unverified | random-init."""

    def tags(self) -> dict[str, str]:
        return {
            "model": self.name,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.sha256,
            "checkpoint_verified": self.verified,
            "image_size": str(self.image_size),
        }


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def _mobile_sam_vit_t():
    """MobileSAM's builder. Importing it imports timm through deprecated paths and re-registers
    timm's tiny_vit_* models (a global side effect of MobileSAM's code): silence exactly those."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"Importing from timm\.models\.(layers|registry) is deprecated",
            category=FutureWarning,
        )
        warnings.filterwarnings(
            "ignore", message=r"Overwriting tiny_vit_\w+ in registry", category=UserWarning
        )
        from mobile_sam import sam_model_registry
    return sam_model_registry["vit_t"]


def _build(spec: ModelSpec) -> nn.Module:
    """A randomly initialised model (under ``torch.device("meta")``: shapes only, no memory)."""
    if spec.family == "tiny":
        return build_tiny_sam(spec.name)
    if spec.family == "mobile_sam":
        return _mobile_sam_vit_t()()
    from segment_anything import sam_model_registry

    return sam_model_registry[spec.name](checkpoint=None)


@functools.cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the model's state_dict (SAM's key layout), built without weights where possible."""
    spec = get_spec(name)
    if spec.family == "sam":
        with torch.device("meta"):
            model = _build(spec)
    else:  # TinyViT's constructor calls .item(), which meta tensors refuse; these are small anyway
        model = _build(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def guess_model_type(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which known model a state dict looks like, from its encoder's signature keys."""
    qkv = sd.get("image_encoder.blocks.0.attn.qkv.weight")
    if qkv is not None and qkv.ndim == 2:
        width = int(qkv.shape[1])
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(width, f"a SAM ViT of width {width}")
    if any(k.startswith("image_encoder.layers.") for k in sd):
        return "vit_t"
    down3 = sd.get("image_encoder.down3.0.weight")
    if down3 is not None:
        for tname, cfg in TINY_CONFIGS.items():
            n3 = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.stage3.")})
            if down3.shape[0] == cfg.widths[2] and n3 == cfg.depths[2]:
                return tname
        return "a tiny generalist of another size"
    if not any(k.startswith("image_encoder.") for k in sd):
        if any(k.startswith("mask_decoder.") for k in sd):
            return "a state dict without an image encoder (decoder only?)"
        first = next(iter(sd), "nothing")
        return f"no SAM model at all (its first key is {first})"
    return None


def _model_from_state_dict(spec: ModelSpec, sd: dict[str, torch.Tensor], path: Path) -> nn.Module:
    meta = spec.family == "sam"  # the big ones: no random init to throw away, no second copy in memory
    if meta:
        with torch.device("meta"):
            model = _build(spec)
    else:
        model = _build(spec)
    own = model.state_dict()
    ckpt.check_state_dict(
        sd, {k: tuple(v.shape) for k, v in own.items()}, path, spec.name, guess_model_type(sd)
    )
    try:
        if meta:
            sd = {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in sd.items()}
            model.load_state_dict(sd, strict=True, assign=True)
            for buf, value in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):
                if getattr(model, buf).is_meta:  # non-persistent buffers: not in any checkpoint
                    model.register_buffer(buf, torch.tensor(value).view(-1, 1, 1), persistent=False)
            left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:
                raise RuntimeError(f"tensors left unloaded: {left[:5]}")
        else:
            model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path} could not be loaded as {spec.name}: {first}") from None
    return model.eval()


def random_model(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised model (for tests and smoke runs); the global RNG is left untouched."""
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec).eval()


# ---------------------------------------------------------------------------------------------
# Finding and verifying checkpoints
# ---------------------------------------------------------------------------------------------


def _how_to_get(spec: ModelSpec, folder: str) -> str:
    if spec.shipped:  # ours: made by pretraining, never downloaded (there is no URL)
        size = spec.name.removeprefix("tiny-")
        return f"make it with `python -m specialsam.pretrain --size {size} --out {folder}/{spec.filename}`"
    return f"get it with `python -m specialsam.models download {spec.name} --dir {folder}` or from {spec.url}"


def _locate(
    spec: ModelSpec, checkpoint_dir: str | os.PathLike | None, checkpoint: str | os.PathLike | None
) -> Path:
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if p.is_dir():
            checkpoint_dir = p
        elif p.is_file():
            return p.absolute()  # not resolve(): a symlink keeps its (official) name
        else:
            raise UserError(f"checkpoint {p} does not exist")
    folder = checkpoint_dir if checkpoint_dir is not None else os.environ.get(CHECKPOINTS_ENV) or None
    if folder is None:
        raise UserError(
            f"{spec.name} needs its checkpoint {spec.filename}: pass --checkpoint-dir DIR (or set "
            f"{CHECKPOINTS_ENV}) naming the folder that holds it; {_how_to_get(spec, 'DIR')}"
        )
    d = Path(folder).expanduser()
    p = d / spec.filename
    if p.is_file():
        return p.absolute()  # not resolve(): a symlink keeps its (official) name
    if not d.is_dir():
        raise UserError(f"checkpoint folder {d} does not exist (looked for {spec.filename} there)")
    others = sorted(f.name for f in d.iterdir() if f.suffix in (".pth", ".pt") and f.is_file())
    hint = (
        f"; other checkpoints there ({', '.join(others[:4])}) load with --checkpoint FILE --allow-unverified"
        if others
        else ""
    )
    raise UserError(
        f"{spec.filename} not found in {d}; {_how_to_get(spec, str(d))}, or pass --checkpoint-dir{hint}"
    )


def _verify(spec: ModelSpec, path: Path, sha256: str | None, allow_unverified: bool) -> tuple[str, str, bool]:
    """(sha256, how it was trusted, whether to record it once it has loaded). Raises on a mismatch."""
    official = not spec.shipped and path.name == spec.filename
    entry = ckpt.read_record(path)
    fresh = entry is not None and ckpt.stat_matches(entry, path)
    if sha256 is not None:
        want = ckpt.normalise_sha256(sha256)
        got = entry["sha256"] if fresh and entry["sha256"] == want else ckpt.file_hashes(path).sha256
        if got != want:
            raise UserError(f"{path} has SHA-256 {got}, expected {want} (wrong or damaged file)")
        return got, "sha256", True
    if entry is not None:
        if fresh:
            return entry["sha256"], "recorded", False
        got = ckpt.file_hashes(path).sha256
        if got == entry["sha256"]:
            return got, "recorded", True  # touched but unchanged: refresh size/mtime
        if not allow_unverified:
            raise UserError(
                f"{path} changed since it was verified: SHA-256 is {got}, recorded {entry['sha256']} in "
                f"{ckpt.record_path(path)}; download it again, or pass --allow-unverified to load it as it is"
            )
        return got, "unverified", False
    if official and (spec.md5 or spec.sha256):
        h = ckpt.file_hashes(path)
        if (spec.sha256 and h.sha256 == spec.sha256) or (not spec.sha256 and h.md5 == spec.md5):
            return h.sha256, "sha256" if spec.sha256 else "md5", True
        if not allow_unverified:
            kind = "SHA-256" if spec.sha256 else "MD5"
            found, want = (h.sha256, spec.sha256) if spec.sha256 else (h.md5, spec.md5)
            raise UserError(
                f"{path} is not the official {spec.name} checkpoint: its {kind} is {found}, expected "
                f"{want} (corrupt or incomplete download?); download it again with "
                f"`python -m specialsam.models download {spec.name} --dir {path.parent}`, or pass "
                "--allow-unverified to load a different file under this name"
            )
        return h.sha256, "unverified", False
    if official:  # MobileSAM: no published hash; trust on first use, then hold it to the record
        return ckpt.file_hashes(path).sha256, "first-use", True
    if not allow_unverified:
        what = f"the shipped {spec.name} weights" if spec.shipped else f"an official {spec.name} checkpoint"
        official_name = "" if spec.shipped else f" (official file name: {spec.filename})"
        raise UserError(
            f"{path} is not {what}{official_name} and has no recorded hash; to load your own checkpoint "
            "pass --allow-unverified, or its expected --sha256"
        )
    return ckpt.file_hashes(path).sha256, "unverified", False


def _load_shipped(spec: ModelSpec, sha256: str | None) -> tuple[nn.Module, ModelInfo]:
    path = WEIGHTS_DIR / spec.filename
    if not path.is_file():
        raise UserError(
            f"no shipped weights for {spec.name} at {path}: run `python -m specialsam.pretrain --size "
            f"{spec.name.removeprefix('tiny-')}` to make them "
            f"(tests: load_model({spec.name!r}, random_init=True))"
        )
    got = ckpt.file_hashes(path).sha256
    card = path.with_suffix(".json")
    try:
        carded = json.loads(card.read_text()).get("sha256") if card.is_file() else None
    except (OSError, ValueError, AttributeError):
        carded = None
    for want, source in (
        (carded, f"its card {card}"),
        (sha256 and ckpt.normalise_sha256(sha256), "--sha256"),
    ):
        if want and got != want:
            raise UserError(
                f"{path} has SHA-256 {got}, but {source} says {want}; reinstall specialsam or "
                "re-run specialsam.pretrain"
            )
    model = _model_from_state_dict(spec, ckpt.read_state_dict(path), path)
    return model, ModelInfo(spec.name, "shipped", got, spec.image_size, spec.embedding_shape, "shipped")


def load_model(
    name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
    allow_unverified: bool = False,
    random_init: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, ModelInfo]:
    """Build ``name`` and load its weights, verified; returns (Sam in eval mode on CPU, ModelInfo).

    tiny-*: the shipped weights unless ``checkpoint`` names a file (e.g. a fine-tune written by
    ``save_official``). Others: ``checkpoint`` (a file, or a folder) or the official file name in
    ``checkpoint_dir`` / $SPECIALSAM_CHECKPOINTS. ``random_init``: no weights at all (tests).
    The vit_t model is MobileSAM's own ``Sam`` class, the others segment_anything's: same interface.
    """
    spec = get_spec(name)
    if random_init:
        if checkpoint is not None or sha256 is not None:
            raise UserError("random_init loads no weights; do not also give a checkpoint or sha256")
        info = ModelInfo(
            name, "random-init", f"random-init-{seed}", spec.image_size, spec.embedding_shape, "random-init"
        )
        return random_model(name, seed), info
    if spec.shipped and checkpoint is None:
        return _load_shipped(spec, sha256)
    path = _locate(spec, checkpoint_dir, checkpoint)
    digest, how, record = _verify(spec, path, sha256, allow_unverified)
    model = _model_from_state_dict(spec, ckpt.read_state_dict(path), path)
    if record:  # only once it has proved to be a loadable checkpoint of this model
        ckpt.write_record(path, digest, name, how)
    return model, ModelInfo(name, str(path), digest, spec.image_size, spec.embedding_shape, how)


def save_official(sam: nn.Module, path: str | os.PathLike) -> str:
    """Write ``sam.state_dict()`` in SAM's official key layout (atomically); returns its SHA-256.

    The file loads with segment_anything's / mobile_sam's own builders, and with
    ``load_model(name, checkpoint=path, sha256=<returned hash>)``.
    """
    return ckpt.atomic_torch_save(ckpt.portable_state_dict(sam), Path(path))


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------


def download(
    name: str,
    dest_dir: str | os.PathLike,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download the official checkpoint of ``name`` into ``dest_dir`` (verified; atomic).

    SAM files must match their MD5; MobileSAM's, having no published hash, must load strictly as a
    vit_t. ``sha256`` pins the expected hash instead. A verified file already there is kept.
    """
    spec = get_spec(name)
    if spec.shipped:
        raise UserError(
            f"{name} ships inside the package ({WEIGHTS_DIR / spec.filename}); nothing to download"
        )
    dest = Path(dest_dir).expanduser() / spec.filename
    url = url or spec.url
    assert url is not None
    want = ckpt.normalise_sha256(sha256) if sha256 else spec.sha256

    def check(path: Path, hashes: ckpt.Hashes, label: str) -> str:
        if want:
            if hashes.sha256 != want:
                raise UserError(f"{label} has SHA-256 {hashes.sha256}, expected {want}")
            return "sha256"
        if spec.md5:
            if hashes.md5 != spec.md5:
                raise UserError(
                    f"{label} has MD5 {hashes.md5}, expected {spec.md5} for {spec.filename} "
                    "(incomplete or altered download); try again"
                )
            return "md5"
        sd = ckpt.read_state_dict(path, label=label)
        ckpt.check_state_dict(sd, expected_shapes(name), label, name, guess_model_type(sd))
        return "first-use"

    if dest.is_file():
        try:
            hashes = ckpt.file_hashes(dest)
            ckpt.write_record(dest, hashes.sha256, name, check(dest, hashes, str(dest)))
            print(f"{dest} is already there and verified", file=sys.stderr)
            return dest
        except UserError as exc:
            print(f"{exc}; downloading it again", file=sys.stderr)
    hows: list[str] = []
    hashes = ckpt.fetch(url, dest, lambda p, h: hows.append(check(p, h, f"download of {url}")), progress)
    ckpt.write_record(dest, hashes.sha256, name, hows[0])
    return dest


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _status(spec: ModelSpec, folder: str | None) -> str:
    if spec.shipped:
        return (
            "shipped"
            if (WEIGHTS_DIR / spec.filename).is_file()
            else (f"missing: python -m specialsam.pretrain --size {spec.name.removeprefix('tiny-')}")
        )
    if folder is None:
        return "-"
    p = Path(folder).expanduser() / spec.filename
    if not p.is_file():
        return "missing"
    entry = ckpt.read_record(p)
    return "verified" if entry and ckpt.stat_matches(entry, p) else "present (verified on first load)"


def _folder(arg: str | None) -> str | None:
    return arg or os.environ.get(CHECKPOINTS_ENV) or None


@cli_errors
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m specialsam.models", description="SAM model registry: list, download, check."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="the known models and, with --dir, which checkpoints are there")
    ls.add_argument("--dir", help=f"checkpoint folder (default ${CHECKPOINTS_ENV})")
    dl = sub.add_parser("download", help="download an official checkpoint (verified, atomic)")
    dl.add_argument("name")
    dl.add_argument("--dir", help=f"destination folder (default ${CHECKPOINTS_ENV})")
    dl.add_argument("--url", help="a mirror to download from instead of the official URL")
    dl.add_argument("--sha256", help="expected SHA-256 of the file")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    ck = sub.add_parser("check", help="load and verify a model, print what was loaded")
    ck.add_argument("name")
    ck.add_argument("--dir", help=f"checkpoint folder (default ${CHECKPOINTS_ENV})")
    ck.add_argument("--checkpoint", help="a checkpoint file instead of the official name in --dir")
    ck.add_argument("--sha256", help="expected SHA-256 of the file")
    ck.add_argument("--allow-unverified", action="store_true", help="load a checkpoint no hash vouches for")
    args = ap.parse_args(argv)

    if args.cmd == "list":
        folder = _folder(args.dir)
        rows = [("name", "params", "image", "embedding", "file", "status")]
        for s in SPECS.values():
            rows.append(
                (
                    s.name,
                    f"{s.params / 1e6:.1f}M",
                    str(s.image_size),
                    "x".join(map(str, s.embedding_shape)),
                    s.filename,
                    _status(s, folder),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        print("\ndownloads:")
        for s in SPECS.values():
            if s.url:
                print(f"  {s.name}: {s.url}")
        if folder is None:
            print(f"\n(pass --dir or set {CHECKPOINTS_ENV} to see which checkpoints are present)")
    elif args.cmd == "download":
        folder = _folder(args.dir)
        if folder is None:
            raise UserError(f"pass --dir DIR (or set {CHECKPOINTS_ENV}) to say where checkpoints go")
        print(download(args.name, folder, url=args.url, sha256=args.sha256, progress=not args.quiet))
    else:
        _, info = load_model(
            args.name,
            checkpoint_dir=_folder(args.dir),
            checkpoint=args.checkpoint,
            sha256=args.sha256,
            allow_unverified=args.allow_unverified,
        )
        for k, v in info.tags().items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
