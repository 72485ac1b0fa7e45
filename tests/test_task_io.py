"""Shared image / mask IO: formats, thresholds, sizes, and one-line errors naming the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import io


def test_read_image_returns_rgb(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = io.read_image(tmp_path / "a.png")
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_read_image_grayscale_rgba_and_16bit_become_rgb_uint8(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = io.read_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] == gray).all() and (out[..., 1] == gray).all() and (out[..., 2] == gray).all()

    bgra = np.zeros((5, 5, 4), np.uint8)
    bgra[..., 1] = 77
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = io.read_image(tmp_path / "a.png")
    assert out.shape == (5, 5, 3) and (out[..., 1] == 77).all()

    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 4), 65535, np.uint16))
    out = io.read_image(tmp_path / "w.png")
    assert out.dtype == np.uint8 and (out == 255).all()


def test_read_image_non_ascii_path(tmp_path):
    path = tmp_path / "tapis_é" / "bild_ü.png"
    io.write_image(path, np.full((6, 7, 3), (10, 20, 30), np.uint8))
    assert (io.read_image(path)[0, 0] == (10, 20, 30)).all()


def test_corrupt_and_missing_image_are_user_errors_naming_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really an image")
    with pytest.raises(
        UserError, match=r"cannot read image file .*broken\.png: not a readable image; remove or"
    ):
        io.read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.png"):
        io.read_image(empty)
    with pytest.raises(UserError, match=r"missing\.png does not exist"):
        io.read_image(tmp_path / "missing.png")


def test_mask_thresholds(tmp_path):
    m = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "m8.png"), m)
    assert io.read_mask(tmp_path / "m8.png").tolist() == [[False, False, False, True, True, True]]

    cv2.imwrite(str(tmp_path / "m01.png"), np.array([[0, 1, 1, 0]], np.uint8))  # 0/1 label mask
    assert io.read_mask(tmp_path / "m01.png").tolist() == [[False, True, True, False]]

    cv2.imwrite(str(tmp_path / "m16.png"), np.array([[0, 30000, 40000, 65535]], np.uint16))
    assert io.read_mask(tmp_path / "m16.png").tolist() == [[False, False, True, True]]

    colour = np.zeros((1, 3, 3), np.uint8)
    colour[0, 1] = (0, 0, 255)  # pure red in BGR: grey level 76 would lose it
    colour[0, 2] = (0, 255, 0)
    cv2.imwrite(str(tmp_path / "mc.png"), colour)
    assert io.read_mask(tmp_path / "mc.png").tolist() == [[False, True, True]]

    cv2.imwrite(str(tmp_path / "z.png"), np.zeros((3, 3), np.uint8))
    m = io.read_mask(tmp_path / "z.png")
    assert m.dtype == bool and not m.any()


def test_mask_size_mismatch_names_mask_image_and_sizes(tmp_path):
    cv2.imwrite(str(tmp_path / "000_mask.png"), np.zeros((20, 30), np.uint8))
    assert io.read_mask(tmp_path / "000_mask.png", expected_hw=(20, 30)).shape == (20, 30)
    with pytest.raises(UserError) as err:
        io.read_mask(tmp_path / "000_mask.png", expected_hw=(64, 48), image_path=tmp_path / "000.png")
    msg = str(err.value)
    assert "000_mask.png is 30x20" in msg and "000.png is 48x64" in msg and "\n" not in msg


def test_corrupt_mask_is_user_error(tmp_path):
    (tmp_path / "m.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"cannot read mask file .*m\.png"):
        io.read_mask(tmp_path / "m.png")


def test_resize_pair_downscales_only(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    mask = np.zeros((100, 200), bool)
    mask[20:60, 40:120] = True
    im2, m2 = io.resize_pair(image, mask, 50)
    assert im2.shape == (25, 50, 3) and im2.dtype == np.uint8
    assert m2.shape == (25, 50) and m2.dtype == bool
    assert m2[5:15, 10:30].all() and m2.sum() == 10 * 20  # nearest keeps a hard, aligned edge
    im3, m3 = io.resize_pair(image, mask, 400)  # never upscale
    assert im3 is image and m3 is mask
    assert io.resize_pair(image, mask, None)[0] is image
    flat = np.full((64, 64, 3), 90, np.uint8)
    assert (io.resize_image(flat, 16) == 90).all()  # area interpolation keeps a flat colour


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.png", "a.JPG", "c.txt", ".hidden.png", "d.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in io.list_images(tmp_path)] == ["a.JPG", "b.png", "d.tif"]
    assert io.list_images(tmp_path / "nope") == []


def test_write_mask_roundtrip(tmp_path):
    m = np.zeros((9, 11), bool)
    m[2:5, 3:9] = True
    io.write_mask(tmp_path / "x" / "m.png", m)
    raw = cv2.imread(str(tmp_path / "x" / "m.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) == {0, 255}
    assert (io.read_mask(tmp_path / "x" / "m.png") == m).all()
