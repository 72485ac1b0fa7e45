"""The model registry: strict round trips in SAM's key layout, integrity checks, one-line errors for
every bad checkpoint, and downloads that leave nothing half-written.

vit_t and vit_b are built once each (random weights); vit_l/vit_h are checked on the meta device only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from specialsam.errors import UserError
from specialsam.models import checkpoints as ckpt
from specialsam.models import registry as models
from specialsam.models.registry import CHECKPOINTS_ENV, load_model, save_official

RECORD = ckpt.RECORD_NAME


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def decode(sam: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder on a fixed embedding and point: the part the sweep trains."""
    c, h, w = models.get_spec("vit_b").embedding_shape
    emb = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(1))
    sparse, dense = sam.prompt_encoder(
        points=(torch.tensor([[[300.0, 500.0]]]), torch.ones(1, 1, dtype=torch.long)), boxes=None, masks=None
    )
    return sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)


@pytest.fixture(scope="module")
def vit_t(tmp_path_factory):
    model, info = load_model("vit_t", random_init=True, seed=0)
    path = tmp_path_factory.mktemp("vit_t") / "mobile_sam.pt"
    sha = save_official(model, path)
    return SimpleNamespace(model=model, info=info, path=path, sha=sha)


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
    model, _ = load_model("vit_b", random_init=True, seed=0)
    path = tmp_path_factory.mktemp("vit_b") / "my_vit_b.pth"
    save_official(model, path)
    return SimpleNamespace(model=model, path=path, hashes=ckpt.file_hashes(path))


def tiny_file(path, seed=0):
    model, _ = load_model("tiny-s", random_init=True, seed=seed)
    return model, save_official(model, path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_vit_t_round_trip_is_trusted_on_first_use_then_recorded(vit_t, tmp_path, monkeypatch):
    os.link(vit_t.path, tmp_path / "mobile_sam.pt")
    monkeypatch.setenv(CHECKPOINTS_ENV, str(tmp_path))
    sam, info = load_model("vit_t")
    assert info.verified == "first-use"
    assert info.checkpoint == str((tmp_path / "mobile_sam.pt").resolve())
    assert info.sha256 == vit_t.sha == sha256_of(tmp_path / "mobile_sam.pt")
    assert (info.image_size, info.embedding_shape) == (1024, (256, 64, 64))
    assert same_weights(sam, vit_t.model)
    assert not sam.training and all(p.device.type == "cpu" for p in sam.parameters())
    for got, want in zip(decode(sam), decode(vit_t.model), strict=True):
        assert torch.equal(got, want)
    record = json.loads((tmp_path / RECORD).read_text())["files"]["mobile_sam.pt"]
    assert record["sha256"] == vit_t.sha and record["model"] == "vit_t"

    monkeypatch.setattr(ckpt, "file_hashes", lambda p: pytest.fail(f"{p} hashed again"))
    sam2, info2 = load_model("vit_t")
    assert info2.verified == "recorded" and info2.sha256 == vit_t.sha
    assert same_weights(sam2, vit_t.model)


def test_save_official_writes_the_layout_mobile_sams_own_builder_loads(vit_t):
    from mobile_sam import sam_model_registry

    assert vit_t.sha == sha256_of(vit_t.path)
    assert not [p for p in vit_t.path.parent.iterdir() if p.name.endswith(".tmp")]
    theirs = sam_model_registry["vit_t"](checkpoint=str(vit_t.path))
    assert same_weights(theirs, vit_t.model)


def test_vit_b_own_checkpoint_needs_allow_unverified_and_round_trips(vit_b):
    msg = error_of(load_model, "vit_b", checkpoint=vit_b.path)
    assert str(vit_b.path) in msg and "--allow-unverified" in msg and "sam_vit_b_01ec64.pth" in msg

    sam, info = load_model("vit_b", checkpoint=vit_b.path, allow_unverified=True)
    assert info.verified == "unverified" and info.sha256 == vit_b.hashes.sha256
    assert same_weights(sam, vit_b.model)
    assert torch.equal(sam.pixel_mean, vit_b.model.pixel_mean) and torch.equal(
        sam.pixel_std, vit_b.model.pixel_std
    )
    tensors = [*sam.parameters(), *sam.buffers()]
    assert not any(t.is_meta for t in tensors) and all(t.device.type == "cpu" for t in tensors)
    assert all(p.requires_grad for p in sam.parameters()) and not sam.training
    for got, want in zip(decode(sam), decode(vit_b.model), strict=True):
        assert torch.equal(got, want)
    assert not (vit_b.path.parent / RECORD).exists()  # an unverified file is never recorded


def test_official_sam_name_is_held_to_its_md5(vit_b, tmp_path, monkeypatch):
    # A file under the real official name whose MD5 is not the official one: refused before loading.
    junk = tmp_path / "real" / "sam_vit_b_01ec64.pth"
    junk.parent.mkdir()
    junk.write_bytes(b"\x80 not the official checkpoint")
    junk_md5 = hashlib.md5(junk.read_bytes()).hexdigest()
    msg = error_of(load_model, "vit_b", checkpoint_dir=junk.parent)
    assert str(junk) in msg and junk_md5 in msg and "01ec64d29a2fca3f0661936605ae66f8" in msg
    assert not (junk.parent / RECORD).exists()
    # allow_unverified skips the hash, never the loading checks
    assert "not a PyTorch checkpoint" in error_of(
        load_model, "vit_b", checkpoint_dir=junk.parent, allow_unverified=True
    )

    # A spec whose official name carries our file's real MD5 prefix: verified, then recorded.
    md5 = vit_b.hashes.md5
    spec = dataclasses.replace(models.SPECS["vit_b"], filename=f"sam_vit_b_{md5[:6]}.pth", md5=md5)
    monkeypatch.setitem(models.SPECS, "vit_b", spec)
    os.link(vit_b.path, tmp_path / spec.filename)
    sam, info = load_model("vit_b", checkpoint_dir=tmp_path)
    assert info.verified == "md5" and info.sha256 == vit_b.hashes.sha256
    assert same_weights(sam, vit_b.model)
    assert json.loads((tmp_path / RECORD).read_text())["files"][spec.filename]["sha256"] == info.sha256


# ---------------------------------------------------------------------------------------------
# Wrong, corrupt and missing checkpoints
# ---------------------------------------------------------------------------------------------


def test_wrong_model_type_names_expected_and_found(vit_t, vit_b, tmp_path):
    msg = error_of(load_model, "vit_b", checkpoint=vit_t.path, allow_unverified=True)
    assert msg.startswith(f"{vit_t.path} is not a vit_b checkpoint:") and msg.endswith("it looks like vit_t")
    assert "missing" in msg and "unexpected" in msg

    msg = error_of(load_model, "vit_h", checkpoint=vit_b.path, allow_unverified=True)
    assert "is not a vit_h checkpoint" in msg and "it looks like vit_b" in msg
    assert "image_encoder.pos_embed has shape (1, 64, 64, 768), expected (1, 64, 64, 1280)" in msg

    tiny_file(tmp_path / "tiny.pt")
    msg = error_of(load_model, "tiny-m", checkpoint=tmp_path / "tiny.pt", allow_unverified=True)
    assert "is not a tiny-m checkpoint" in msg and "it looks like tiny-s" in msg and "has shape" in msg


def _corrupt_files(tmp_path, vit_t_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data = vit_t_path.read_bytes()
    files = {
        "random.pt": b"\x00" + noise,
        "random-pickle-like.pt": b"\x80" + noise,
        "truncated.pt": data[: len(data) // 2],
        "cut-short.pt": data[:-100],
        "empty.pt": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "not-torch.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    torch.save({"weights": torch.zeros(2), "callback": os.getcwd}, tmp_path / "objects.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no-tensors.pt")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("random.pt", "is not a PyTorch checkpoint (corrupt or truncated)"),
        ("random-pickle-like.pt", "is not a PyTorch checkpoint (corrupt or truncated)"),
        ("truncated.pt", "is not a PyTorch checkpoint (corrupt or truncated)"),
        ("cut-short.pt", "is not a PyTorch checkpoint (corrupt or truncated)"),
        ("not-torch.pt", "is not a PyTorch checkpoint (corrupt or truncated)"),
        ("empty.pt", "is empty"),
        ("objects.pt", "holds Python objects, not just tensors (found posix.getcwd)"),
        ("tensor.pt", "does not hold a state_dict: found a Tensor"),
        ("no-tensors.pt", "does not hold a state_dict of tensors: found a dict with keys epoch, lr"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(vit_t, tmp_path, name, expected):
    _corrupt_files(tmp_path, vit_t.path)
    msg = error_of(load_model, "vit_t", checkpoint=tmp_path / name, allow_unverified=True)
    assert msg.startswith(str(tmp_path / name)) and expected in msg


def test_common_wrappers_are_unwrapped(tmp_path):
    model, _ = load_model("tiny-s", random_init=True, seed=4)
    sd = model.state_dict()
    torch.save({"model": sd, "epoch": 7}, tmp_path / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    for name in ("wrapped.pt", "ddp.pt"):
        sam, _ = load_model("tiny-s", checkpoint=tmp_path / name, allow_unverified=True)
        assert same_weights(sam, model)


def test_missing_checkpoint_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINTS_ENV, raising=False)
    msg = error_of(load_model, "vit_b", checkpoint_dir=tmp_path)
    spec = models.get_spec("vit_b")
    assert f"sam_vit_b_01ec64.pth not found in {tmp_path}" in msg
    assert f"python -m specialsam.models download vit_b --dir {tmp_path}" in msg
    assert spec.url in msg and "--checkpoint-dir" in msg

    (tmp_path / "medsam_vit_b.pth").write_bytes(b"x")
    assert "medsam_vit_b.pth" in error_of(load_model, "vit_b", checkpoint_dir=tmp_path)

    # a tiny model asked for in a folder: it is made by pretraining, not downloaded from a URL
    msg = error_of(load_model, "tiny-m", checkpoint=tmp_path)
    assert f"python -m specialsam.pretrain --size m --out {tmp_path}/tiny-m.pt" in msg
    assert "download" not in msg and "None" not in msg

    msg = error_of(load_model, "vit_l")  # nothing configured at all
    assert CHECKPOINTS_ENV in msg and "--checkpoint-dir" in msg and "sam_vit_l_0b3195.pth" in msg

    assert "does not exist" in error_of(load_model, "vit_h", checkpoint_dir=tmp_path / "nope")
    assert f"checkpoint {tmp_path / 'x.pth'} does not exist" in error_of(
        load_model, "vit_b", checkpoint=tmp_path / "x.pth"
    )


def test_unknown_model_lists_known_names():
    msg = error_of(load_model, "vit_x")
    assert "'vit_x'" in msg and all(n in msg for n in models.MODEL_NAMES)
    assert models.MODEL_NAMES == ("tiny-s", "tiny-m", "vit_t", "vit_b", "vit_l", "vit_h")


# ---------------------------------------------------------------------------------------------
# Hashes given by the user and the record
# ---------------------------------------------------------------------------------------------


def test_user_sha256_is_checked_then_recorded(tmp_path, monkeypatch):
    path = tmp_path / "finetuned-tiny.pt"
    model, sha = tiny_file(path)

    msg = error_of(load_model, "tiny-s", checkpoint=path, sha256="0" * 64)
    assert str(path) in msg and sha in msg and "0" * 64 in msg
    assert "64 hex digits" in error_of(load_model, "tiny-s", checkpoint=path, sha256="abc")

    sam, info = load_model("tiny-s", checkpoint=path, sha256=sha.upper())
    assert info.verified == "sha256" and info.sha256 == sha and same_weights(sam, model)

    monkeypatch.setattr(ckpt, "file_hashes", lambda p: pytest.fail("hashed again"))
    _, info = load_model("tiny-s", checkpoint=path)  # verified once: no flag needed any more
    assert info.verified == "recorded" and info.sha256 == sha
    monkeypatch.undo()

    # replaced by other weights: the record catches it
    other, other_sha = tiny_file(path, seed=1)
    msg = error_of(load_model, "tiny-s", checkpoint=path)
    assert "changed since it was verified" in msg and sha in msg and other_sha in msg
    sam, info = load_model("tiny-s", checkpoint=path, allow_unverified=True)
    assert info.verified == "unverified" and info.sha256 == other_sha and same_weights(sam, other)


def test_touched_but_unchanged_file_is_rehashed_and_still_trusted(vit_t, tmp_path):
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(vit_t.path.read_bytes())
    assert load_model("vit_t", checkpoint=path)[1].verified == "first-use"
    os.utime(path, ns=(1, 1))
    _, info = load_model("vit_t", checkpoint=path)
    assert info.verified == "recorded" and info.sha256 == vit_t.sha
    assert json.loads((tmp_path / RECORD).read_text())["files"]["mobile_sam.pt"]["mtime_ns"] == 1


def test_symlinked_checkpoint_keeps_its_official_name(vit_t, tmp_path):
    (tmp_path / "blobs").mkdir()
    os.link(vit_t.path, tmp_path / "blobs" / "3f2a9c")  # e.g. a content-addressed store
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "mobile_sam.pt").symlink_to(tmp_path / "blobs" / "3f2a9c")
    _, info = load_model("vit_t", checkpoint_dir=tmp_path / "ckpts")
    assert info.verified == "first-use" and info.checkpoint == str(tmp_path / "ckpts" / "mobile_sam.pt")
    assert (tmp_path / "ckpts" / RECORD).exists()


# ---------------------------------------------------------------------------------------------
# Shipped tiny weights, random init, specs
# ---------------------------------------------------------------------------------------------


def test_shipped_tiny_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    msg = error_of(load_model, "tiny-s")
    assert str(tmp_path / "tiny-s.pt") in msg and "python -m specialsam.pretrain --size s" in msg
    assert "random_init=True" in msg

    model, sha = tiny_file(tmp_path / "tiny-s.pt")
    sam, info = load_model("tiny-s", checkpoint_dir="/ignored/for/tiny")
    assert (info.checkpoint, info.verified, info.sha256) == ("shipped", "shipped", sha)
    assert (info.image_size, info.embedding_shape) == (256, (64, 16, 16))
    assert same_weights(sam, model)
    (tmp_path / "tiny-s.json").write_text(json.dumps({"name": "tiny-s", "sha256": "f" * 64}))
    msg = error_of(load_model, "tiny-s")
    assert "tiny-s.json" in msg and sha in msg and "f" * 64 in msg
    (tmp_path / "tiny-s.json").write_text(json.dumps({"name": "tiny-s", "sha256": sha}))
    assert load_model("tiny-s")[1].sha256 == sha


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, info = load_model("tiny-m", random_init=True, seed=3)
    b, _ = load_model("tiny-m", random_init=True, seed=3)
    c, _ = load_model("tiny-m", random_init=True, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert same_weights(a, b) and not same_weights(a, c)
    assert (info.checkpoint, info.sha256, info.verified) == ("random-init", "random-init-3", "random-init")
    assert info.tags()["checkpoint_sha256"] == "random-init-3"
    assert "random_init" in error_of(load_model, "tiny-m", random_init=True, checkpoint="x.pt")


@pytest.mark.parametrize("name, width", [("vit_b", 768), ("vit_l", 1024), ("vit_h", 1280)])
def test_sam_specs(name, width):
    spec = models.get_spec(name)
    assert spec.filename == f"sam_{name}_{spec.md5[:6]}.pth" and len(spec.md5) == 32
    assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything/{spec.filename}"
    shapes = models.expected_shapes(name)
    assert shapes["image_encoder.blocks.0.attn.qkv.weight"] == (3 * width, width)
    with torch.device("meta"):  # shapes only: vit_h is never really built in tests
        sam = models._build(spec)
    assert sum(p.numel() for p in sam.parameters()) == spec.params
    out = sam.image_encoder(torch.empty(1, 3, spec.image_size, spec.image_size, device="meta"))
    assert tuple(out.shape[1:]) == spec.embedding_shape == (256, 64, 64)
    assert models.guess_model_type(sam.state_dict()) == name


@pytest.mark.parametrize("name", ["tiny-s", "tiny-m", "vit_t"])
def test_small_specs(name):
    spec = models.get_spec(name)
    sam = models.random_model(name).to("meta")
    assert sum(p.numel() for p in sam.parameters()) == spec.params
    out = sam.image_encoder(torch.empty(1, 3, spec.image_size, spec.image_size, device="meta"))
    assert tuple(out.shape[1:]) == spec.embedding_shape
    assert models.guess_model_type(sam.state_dict()) == name
    if name == "vit_t":
        assert spec.url.endswith("/mobile_sam.pt") and spec.filename == "mobile_sam.pt" and spec.md5 is None


# ---------------------------------------------------------------------------------------------
# Downloads (a local HTTP server)
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    files: dict = {}
    hits: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        body, claimed = body if isinstance(body, tuple) else (body, len(body))
        self.send_response(200)
        self.send_header("Content-Length", str(claimed))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    files, hits = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"files": files, "hits": hits}))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", files=files, hits=hits)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served_vit_b(server, monkeypatch):
    """A small payload served as vit_b, under a spec whose official name matches its MD5."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    payload = b"pretend SAM weights " * 1000
    md5 = hashlib.md5(payload).hexdigest()
    spec = dataclasses.replace(
        models.SPECS["vit_b"], filename=f"sam_vit_b_{md5[:6]}.pth", md5=md5, url=f"{server.url}/vit_b.pth"
    )
    monkeypatch.setitem(models.SPECS, "vit_b", spec)
    server.files["/vit_b.pth"] = payload
    return SimpleNamespace(spec=spec, payload=payload, sha=hashlib.sha256(payload).hexdigest())


def test_download_verifies_md5_renames_and_records(server, served_vit_b, tmp_path):
    dest = tmp_path / "ckpts"
    path = models.download("vit_b", dest, progress=False)
    assert path == dest / served_vit_b.spec.filename and path.read_bytes() == served_vit_b.payload
    assert sorted(p.name for p in dest.iterdir()) == sorted([served_vit_b.spec.filename, RECORD])
    entry = json.loads((dest / RECORD).read_text())["files"][path.name]
    assert entry["sha256"] == served_vit_b.sha and entry["verified_by"] == "md5"
    hits = len(server.hits)
    assert models.download("vit_b", dest, progress=False) == path  # verified file kept, not fetched
    assert len(server.hits) == hits
    path.write_bytes(b"damaged")  # a damaged file is fetched again and replaced
    assert models.download("vit_b", dest, progress=False).read_bytes() == served_vit_b.payload
    assert len(server.hits) == hits + 1


@pytest.mark.parametrize(
    "case, expected",
    [
        ("404", "HTTP 404"),
        ("md5", "has MD5"),
        ("sha256", "has SHA-256"),
        ("truncated", "truncated"),
        ("unreachable", "could not reach"),
    ],
)
def test_failed_download_leaves_nothing(server, served_vit_b, tmp_path, monkeypatch, case, expected):
    dest = tmp_path / "ckpts"
    url, sha = f"{server.url}/vit_b.pth", None
    if case == "404":
        url = f"{server.url}/missing.pth"
    elif case == "md5":
        server.files["/other.pth"] = b"something else"
        url = f"{server.url}/other.pth"
    elif case == "sha256":
        sha = "a" * 64
    elif case == "truncated":
        server.files["/short.pth"] = (served_vit_b.payload[:1000], len(served_vit_b.payload))
        url = f"{server.url}/short.pth"
    else:
        url = "http://127.0.0.1:9/nothing-listens-here"
    msg = error_of(models.download, "vit_b", dest, url=url, sha256=sha, progress=False)
    assert expected in msg
    assert list(dest.iterdir()) == []


def test_download_of_mobile_sam_checks_structure_and_loads_from_record(server, vit_t, tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server.files["/mobile_sam.pt"] = vit_t.path.read_bytes()
    server.files["/junk.pt"] = b"\x80junk" * 100
    dest = tmp_path / "ckpts"
    msg = error_of(models.download, "vit_t", dest, url=f"{server.url}/junk.pt", progress=False)
    assert f"download of {server.url}/junk.pt is not a PyTorch checkpoint" in msg
    assert list(dest.iterdir()) == []

    path = models.download("vit_t", dest, url=f"{server.url}/mobile_sam.pt", progress=False)
    assert path == dest / "mobile_sam.pt" and sha256_of(path) == vit_t.sha
    monkeypatch.setattr(ckpt, "file_hashes", lambda p: pytest.fail("hashed again"))
    sam, info = load_model("vit_t", checkpoint_dir=dest)
    assert info.verified == "recorded" and info.sha256 == vit_t.sha and same_weights(sam, vit_t.model)


def test_cli(server, served_vit_b, tmp_path, capsys):
    dest = tmp_path / "ckpts"
    models.main(["download", "vit_b", "--dir", str(dest), "--quiet"])
    assert capsys.readouterr().out.strip() == str(dest / served_vit_b.spec.filename)

    models.main(["list", "--dir", str(dest)])
    out = capsys.readouterr().out
    assert all(n in out for n in models.MODEL_NAMES)
    line = next(row for row in out.splitlines() if row.startswith("vit_b "))
    assert line.split()[-1] == "verified"

    with pytest.raises(SystemExit) as exc:
        models.main(["download", "tiny-s", "--dir", str(dest)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: tiny-s ships inside the package")

    with pytest.raises(SystemExit) as exc:  # check: verified by MD5, but not loadable
        models.main(["check", "vit_b", "--dir", str(dest)])
    assert exc.value.code == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
