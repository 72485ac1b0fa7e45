"""The COCO-format task: the documented layouts, instances, splits by image, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import load_task
from specialsam.tasks.io import write_image
from specialsam.tasks.procedural.coco import segmentation
from tests.conftest import run_sweep_cli

H, W = 48, 64
CATS = [
    {"id": 1, "name": "bottle", "supercategory": "plastic"},
    {"id": 2, "name": "can", "supercategory": "metal"},
    {"id": 7, "name": "rov", "supercategory": "rov"},
]


def _rect(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _rect_polygon(y0: int, x0: int, y1: int, x1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_dataset(
    root: Path,
    json_rel: str,
    images_rel: str,
    n_images: int,
    first_id: int = 1,
    name: str = "img_{:03d}.png",
    crowd: bool = False,
    tiny: bool = False,
) -> dict:
    """A COCO json with ``n_images`` images: a polygon bottle, an RLE can, a list-RLE rov on each
    (plus a crowd region and a 9-pixel instance when asked). Returns the document."""
    rng = np.random.default_rng(first_id)
    images, anns = [], []
    for k in range(n_images):
        iid = first_id + k
        file_name = name.format(iid)
        write_image(root / images_rel / file_name, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        images.append({"id": iid, "file_name": file_name, "height": H, "width": W})
        inst = [
            (1, _rect_polygon(4, 4, 20, 24), 0),
            (2, segmentation(_rect(24, 30, 44, 50), "rle"), 0),
            (7, segmentation(_rect(2, 40, 14, 60), "rle-list"), 0),
        ]
        if crowd:
            inst.append((1, segmentation(_rect(30, 2, 46, 20), "rle-list"), 1))
        if tiny:
            inst.append((2, _rect_polygon(40, 56, 43, 59), 0))
        for cat, seg, is_crowd in inst:
            anns.append(
                {
                    "id": 100 * iid + len(anns),
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": is_crowd,
                    "area": 0.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
    doc = {"images": images, "annotations": anns, "categories": CATS}
    path = root / json_rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


# ------------------------------------------------------------------ the documented layouts


def coco2017(root: Path) -> None:
    write_dataset(root, "annotations/instances_train2017.json", "train2017", 8, name="{:012d}.jpg")
    write_dataset(root, "annotations/instances_val2017.json", "val2017", 3, first_id=500, name="{:012d}.jpg")


def trashcan(root: Path) -> None:
    write_dataset(root, "instances_train_trashcan.json", "train", 8, name="vid_{:05d}_frame.jpg")
    write_dataset(root, "instances_val_trashcan.json", "val", 3, first_id=500, name="vid_{:05d}_frame.jpg")


def zerowaste(root: Path) -> None:
    write_dataset(root, "train/labels.json", "train/data", 6)
    write_dataset(root, "val/labels.json", "val/data", 2, first_id=300)
    write_dataset(root, "test/labels.json", "test/data", 3, first_id=500)


def taco(root: Path) -> None:
    doc = write_dataset(root, "data/annotations.json", "data", 11, name="batch_1/{:06d}.jpg")
    # TACO's split script: annotations_<round>_<split>.json beside annotations.json
    ids = [im["id"] for im in doc["images"]]
    for split, part in (("train", ids[:6]), ("val", ids[6:8]), ("test", ids[8:])):
        sub = {
            "images": [im for im in doc["images"] if im["id"] in part],
            "annotations": [a for a in doc["annotations"] if a["image_id"] in part],
            "categories": doc["categories"],
        }
        (root / "data" / f"annotations_0_{split}.json").write_text(json.dumps(sub))


@pytest.mark.parametrize(
    "layout,maker,counts",
    [
        ("COCO 2017", coco2017, {"test": 3}),
        ("TrashCan 1.0", trashcan, {"test": 3}),
        ("ZeroWaste-f", zerowaste, {"train": 6, "val": 2, "test": 3}),
        ("TACO", taco, {}),
    ],
)
def test_documented_layouts_are_recognised(tmp_path, layout, maker, counts):
    maker(tmp_path)
    task = load_task("coco", tmp_path)
    assert task.data == "real" and layout in task.source
    for split, n_images in counts.items():
        assert len({s.image_id for s in getattr(task, split)}) == n_images, split
    for split in ("train", "val", "test"):
        samples = getattr(task, split)
        assert len(samples) == 3 * len({s.image_id for s in samples})  # three instances per image
    assert {s.category for s in task.test} == {"plastic/bottle", "metal/can", "rov"}
    assert all(Path(s.image_id).is_file() for s in task.train)


def test_taco_split_files_per_split(tmp_path):
    taco(tmp_path)
    files = {s: f"data/annotations_0_{s}.json" for s in ("train", "val", "test")}
    task = load_task("coco", tmp_path, {"annotations": files, "images": "data"})
    assert [len({s.image_id for s in getattr(task, x)}) for x in ("train", "val", "test")] == [6, 2, 3]
    assert task.test[0].key.startswith("batch_1/")


def test_polygon_and_both_rles_decode_to_their_masks(tmp_path):
    zerowaste(tmp_path)
    task = load_task("coco", tmp_path)
    by_cat = {s.category: s.mask for s in task.test if s.image_id.endswith("img_500.png")}
    np.testing.assert_array_equal(by_cat["metal/can"], _rect(24, 30, 44, 50))  # compressed RLE
    np.testing.assert_array_equal(by_cat["rov"], _rect(2, 40, 14, 60))  # uncompressed RLE
    rect = _rect(4, 4, 20, 24)
    poly = by_cat["plastic/bottle"]
    assert (poly & rect).sum() / (poly | rect).sum() > 0.85  # polygon edges rasterise to +-1 px


def test_instances_of_an_image_share_its_source_and_identity(tmp_path):
    zerowaste(tmp_path)
    task = load_task("coco", tmp_path)
    by_image: dict[str, list] = {}
    for s in task.train:
        by_image.setdefault(s.image_id, []).append(s)
    for group in by_image.values():
        assert all(s.source is group[0].source for s in group)  # one image, decoded on demand
        assert not group[0].source.in_memory and np.array_equal(group[0].image, group[-1].image)
        assert len({s.image_hash() for s in group}) == 1
    # training order mixes images (a batch is not one image's instances)
    firsts = [s.image_id for s in task.train[:6]]
    assert len(set(firsts)) > 2


def test_crowd_and_tiny_instances_are_skipped_and_counted(tmp_path):
    write_dataset(tmp_path, "all.json", "images", 20, crowd=True, tiny=True)
    task = load_task("coco", tmp_path, {"annotations": "all.json", "images": "images"})
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 3 * 20
    line = next(x for x in task.notes if x.startswith("instances per split"))
    assert "20 iscrowd regions" in line and "20 below data.min_area=100 px" in line
    kept = load_task("coco", tmp_path, {"annotations": "all.json", "images": "images", "min_area": 5})
    assert sum(len(getattr(kept, x)) for x in ("train", "val", "test")) == 4 * 20


def test_single_file_is_split_by_image_with_the_seed(tmp_path):
    write_dataset(tmp_path, "all.json", "images", 40)
    opts = {"annotations": "all.json", "images": "images"}
    task = load_task("coco", tmp_path, opts, seed=3)
    ids = {x: {s.image_id for s in getattr(task, x)} for x in ("train", "val", "test")}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert sum(len(v) for v in ids.values()) == 40 and len(ids["test"]) == 6
    again = load_task("coco", tmp_path, opts, seed=3)
    assert [s.key for s in again.train] == [s.key for s in task.train]
    other = load_task("coco", tmp_path, opts, seed=4)
    assert {s.image_id for s in other.test} != ids["test"]


def test_categories_filter_and_supercategory_level(tmp_path):
    write_dataset(tmp_path, "all.json", "images", 20)
    opts = {"annotations": "all.json", "images": "images", "categories": ["metal", "bottle"]}
    task = load_task("coco", tmp_path, {**opts, "category_level": "supercategory"})
    assert {s.category for s in task.train} == {"metal", "plastic"}
    assert "40 outside data.categories" not in " ".join(task.notes)  # counted, per split summed
    assert "20 outside data.categories" in " ".join(task.notes)


def test_max_images_caps_a_split_with_a_note(tmp_path):
    coco2017(tmp_path)
    task = load_task("coco", tmp_path, {"max_images": {"train": 4}})
    assert len({s.image_id for s in task.train}) == 4
    assert any("data.max_images.train" in x for x in task.notes)


def test_standin_goes_through_the_loader_with_categories():
    task = load_task("coco", None, {"procedural_images": 30})
    assert task.data == "procedural" and task.train and task.val and task.test
    assert {s.category.split("/")[0] for s in task.train} <= {"container", "soft"}
    assert "iscrowd" in " ".join(task.notes) or "min_area" in " ".join(task.notes)
    assert all(s.image_id.startswith("procedural-coco/scene_") for s in task.test)
    again = load_task("coco", None, {"procedural_images": 30})
    assert [(s.key, s.image_id) for s in again.train] == [(s.key, s.image_id) for s in task.train]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again.test, task.test))


# ------------------------------------------------------------------ bad input, one line each


def _error(tmp_path: Path, options: dict) -> str:
    with pytest.raises(UserError) as exc:
        load_task("coco", tmp_path, options)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_annotation_file_missing_not_json_not_coco(tmp_path):
    assert "does not exist" in _error(tmp_path, {"annotations": "nope.json"})
    (tmp_path / "bad.json").write_text("{not json")
    assert "is not JSON" in _error(tmp_path, {"annotations": "bad.json"})
    (tmp_path / "other.json").write_text(json.dumps({"annotations": [], "categories": []}))
    msg = _error(tmp_path, {"annotations": "other.json"})
    assert "not a COCO instances file" in msg and "missing images" in msg
    assert "no COCO annotation file found" in _error(tmp_path, {})


def test_images_missing_on_disk_are_named(tmp_path):
    write_dataset(tmp_path, "all.json", "images", 10)
    for p in sorted((tmp_path / "images").iterdir())[:5]:
        p.unlink()
    msg = _error(tmp_path, {"annotations": "all.json", "images": "images"})
    assert "5 images listed in the annotations are missing on disk" in msg and "img_001.png" in msg
    assert "and 2 more" in msg


@pytest.mark.parametrize(
    "seg,why",
    [
        ([[1, 2, 3, 4]], "polygons"),
        ([[1, 2, 3, "x", 5, 6]], "polygons"),
        ({"size": [10, 10], "counts": "abc"}, "RLE size"),
        ({"size": [H, W], "counts": [5, 6]}, "sum to height x width"),
        ("garbage", "neither polygons nor RLE"),
    ],
)
def test_unparsable_segmentation(tmp_path, seg, why):
    doc = write_dataset(tmp_path, "all.json", "images", 10)
    doc["annotations"][4]["segmentation"] = seg
    (tmp_path / "all.json").write_text(json.dumps(doc))
    msg = _error(tmp_path, {"annotations": "all.json", "images": "images", "val_fraction": 0.0001})
    assert f"annotation {doc['annotations'][4]['id']} has an unparsable segmentation" in msg and why in msg


def test_category_id_not_in_categories(tmp_path):
    doc = write_dataset(tmp_path, "all.json", "images", 5)
    doc["annotations"][2]["category_id"] = 99
    (tmp_path / "all.json").write_text(json.dumps(doc))
    msg = _error(tmp_path, {"annotations": "all.json", "images": "images"})
    assert "category_id 99" in msg and "not in its categories" in msg


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"min_area": 10_000}, "below data.min_area=10000 px, 6 iscrowd regions); lower data.min_area"),
        ({"categories": ["plastic"], "min_area": 1000}, "outside data.categories"),
    ],
)
def test_every_instance_filtered_out_names_the_filter(tmp_path, extra, needle):
    write_dataset(tmp_path, "all.json", "images", 10, crowd=True)
    msg = _error(tmp_path, {"annotations": "all.json", "images": "images", **extra})
    assert "every instance of its" in msg and needle in msg


def test_unknown_category_filter_lists_the_known_names(tmp_path):
    write_dataset(tmp_path, "all.json", "images", 5)
    msg = _error(tmp_path, {"annotations": "all.json", "images": "images", "categories": ["bottel"]})
    assert "bottel" in msg and "bottle" in msg


def test_bad_input_exits_2_through_the_cli_writing_nothing(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "annotations.json").write_text("[1, 2]")
    before = set(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        run_sweep_cli(["--task", "coco", "--data-root", str(tmp_path / "data"), "--plan"], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a COCO instances file" in err[0]
    assert set(tmp_path.iterdir()) == before
