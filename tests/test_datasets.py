import json
import zipfile
from pathlib import Path

import pytest
import torch

from dml.data import DatasetError, DMLDataModule, Record, carve_validation
from dml.data import archive as archive_module
from dml.data.folder import CSVImages, ImageFolder
from dml.data.image_io import load_image
from dml.data.omniglot import Omniglot, merge_classes
from dml.data.records import summarize
from dml.data.synthetic import Synthetic
from dml.data.transforms import build_transform
from dml.errors import ConfigError

from .conftest import real_data_dir, write_png


def test_omniglot_splits_from_official_zips(omniglot_root: Path):
    splits = Omniglot().splits()
    assert summarize(splits) == {
        "train": {"classes": 12, "images": 48},
        "test": {"classes": 4, "images": 16},
    }
    r = splits["train"][0]
    assert r.label == f"{r.group}/character01" and Path(r.item).is_file()
    assert Omniglot().load(r.item).mode == "L"


def test_omniglot_extracts_once(omniglot_root: Path, tmp_path: Path):
    Omniglot().splits()
    [marker] = (tmp_path / "cache" / "omniglot").glob("images_background.*/.extracted")
    stamp = marker.stat().st_mtime_ns
    Omniglot().splits()
    assert marker.stat().st_mtime_ns == stamp


def test_unpacking_a_changed_archive_leaves_the_files_a_reader_holds(
    omniglot_root: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run reading an unpacked archive keeps its files, untouched, while another process
    unpacks a changed archive or fingerprints it differently (another dml version): each
    unpacking has its own folder."""
    held = [Path(r.item) for r in Omniglot().splits()["train"]]
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in held}
    with zipfile.ZipFile(omniglot_root / "images_background.zip", "a") as z:
        z.writestr("images_background/README.txt", "a new release\n")
    changed = [Path(r.item) for r in Omniglot().splits()["train"]]
    fingerprint = archive_module.archive_fingerprint
    monkeypatch.setattr(archive_module, "archive_fingerprint",
                        lambda path: [*fingerprint(path), "another version's field"])
    other_version = [Path(r.item) for r in Omniglot().splits()["train"]]
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in held} == before
    trees = {paths[0].parents[3] for paths in (held, changed, other_version)}
    assert len(trees) == 3  # three unpackings, side by side
    assert [p.read_bytes() for p in other_version] == [before[p][1] for p in held]


def test_omniglot_missing_says_where_it_looked(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DML_DATA_DIR", str(tmp_path))
    with pytest.raises(
        DatasetError, match=rf"{tmp_path}/omniglot/images_background.zip.*DML_DATA_DIR"
    ):
        Omniglot().splits()


def test_no_data_dir_at_all_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("DML_DATA_DIR", raising=False)
    with pytest.raises(
        DatasetError, match=r"data\.source\.root=PATH or the environment variable DML_DATA_DIR"
    ):
        Omniglot()


def test_offline_download_fails_with_a_clear_error(tmp_path: Path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(
        DatasetError, match=r"could not download .*images_background.zip.*copy the file"
    ):
        Omniglot(root=tmp_path, download=True).splits()


def test_merge_classes_unites_distinct_groups_deterministically():
    records = [
        Record(f"{g}{c}{i}", f"{g}/c{c}", g) for g in "ABCDE" for c in range(4) for i in range(2)
    ]
    merged = merge_classes(records, 3, seed=1)
    assert merged == merge_classes(records, 3, seed=1)
    members: dict[str, set[str]] = {}
    for r in merged:
        members.setdefault(r.label, set()).add(r.item[:2])
    for label, _parts in members.items():
        groups = [p.split("/")[0] for p in label.split("+")]
        assert len(groups) == len(set(groups)) == 3
    # 20 characters in 5 groups of 4 -> 6 merged classes (18 characters), 2 left over
    assert len(members) == 6 and len(merged) == 36


@pytest.mark.skipif(real_data_dir() is None, reason="real Omniglot not available (DML_DATA_DIR)")
def test_real_omniglot_counts_and_merged_variant_is_class_disjoint():
    splits = Omniglot(real_data_dir() / "omniglot").splits()
    assert summarize(splits) == {
        "train": {"classes": 964, "images": 19280},
        "test": {"classes": 659, "images": 13180},
    }
    merged = Omniglot(real_data_dir() / "omniglot", merge_characters=3).splits()
    chars = {s: {c for r in recs for c in r.label.split("+")} for s, recs in merged.items()}
    assert not chars["train"] & chars["test"]
    assert summarize(merged)["train"]["classes"] == 321


def test_image_folder_layouts(tmp_path: Path):
    for c in range(4):
        for i in range(3):
            write_png(tmp_path / "flat" / f"c{c}" / f"{i}.png", c * 10 + i, mode="RGB")
            write_png(tmp_path / "split" / ("train" if c < 2 else "test") / f"c{c}" / f"{i}.png", i)
    flat = ImageFolder(tmp_path / "flat").splits()
    assert {r.label for r in flat["train"]} == {"c0", "c1"}
    assert {r.label for r in flat["test"]} == {"c2", "c3"}
    split = ImageFolder(tmp_path / "split").splits()
    assert summarize(split) == {
        "train": {"classes": 2, "images": 6},
        "test": {"classes": 2, "images": 6},
    }


def test_empty_class_folder_is_named(tmp_path: Path):
    write_png(tmp_path / "a" / "0.png", 0)
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match=rf"empty class folder {tmp_path}/b"):
        ImageFolder(tmp_path).splits()


def test_corrupt_image_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=rf"cannot read image {bad}"):
        load_image(bad)


def test_csv_source_and_malformed_line(tmp_path: Path):
    write_png(tmp_path / "img" / "x.png", 0)
    good = tmp_path / "good.csv"
    good.write_text("path,label,split\nimg/x.png,a,train\nimg/x.png,b,test\n")
    splits = CSVImages(good).splits()
    assert splits["train"][0].item == str(tmp_path / "img" / "x.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\nimg/x.png,a,train\nimg/x.png,b,tset\n")
    with pytest.raises(DatasetError, match=rf"{bad}:3: bad row"):
        CSVImages(bad).splits()


def test_carve_validation_is_group_disjoint_and_seeded():
    records = [Record(i, f"g{i % 6}/c{i % 12}", f"g{i % 6}") for i in range(120)]
    train, val = carve_validation(records, 2, seed=4)
    assert len({r.group for r in val}) == 2
    assert not {r.group for r in train} & {r.group for r in val}
    assert carve_validation(records, 2, seed=4) == (train, val)
    assert len({r.group for r in carve_validation(records, 0.5)[1]}) == 3
    with pytest.raises(DatasetError, match="val_holdout"):
        carve_validation(records, 6)


def test_datamodule_batches_and_splits():
    tf = build_transform(size=16, channels=1, mean=[0.5], std=[0.5])
    dm = DMLDataModule(Synthetic(), tf, tf, batch_p=4, batch_k=2, val_holdout=2, seed=0)
    dm.setup()
    assert set(dm.datasets) == {"train", "val", "test"}
    x, y, _idx = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 16, 16) and len(torch.unique(y)) == 4
    (val_loader,) = dm.val_dataloader()
    _xv, _yv, iv = next(iter(val_loader))
    assert iv.tolist() == list(range(len(iv)))
    summary = json.dumps(summarize(dm.split_records()))
    assert '"val": {"classes": 2' in summary


def test_transform_shapes_and_inversion():
    from PIL import Image

    white = Image.new("L", (40, 30), 255)
    t = build_transform(
        size=24,
        resize=28,
        train=True,
        degrees=10,
        translate=0.1,
        fill=255,
        channels=1,
        invert=True,
        mean=[0.0],
        std=[1.0],
    )
    out = t(white)
    assert out.shape == (1, 24, 24) and torch.allclose(out, torch.zeros_like(out), atol=1e-6)
    rgb = build_transform(size=8)(white)
    assert rgb.shape == (3, 8, 8)
    with pytest.raises(ConfigError, match=r"mean and \.std need"):
        build_transform(size=8, channels=1)


def test_omniglot_train_rotations_add_rotated_classes(omniglot_root: Path):
    plain = Omniglot().splits()
    rotated = Omniglot(train_rotations=4).splits()
    assert summarize(rotated)["train"] == {"classes": 48, "images": 192}
    assert rotated["test"] == plain["test"]  # test classes are never rotated
    source = Omniglot()
    r = next(r for r in rotated["train"] if r.label.endswith("@90"))
    path, turns = r.item
    assert turns == 1 and r.group == r.label.split("/")[0]
    expected = source.load(path).rotate(90)
    assert source.load(r.item).tobytes() == expected.tobytes() != source.load(path).tobytes()
    with pytest.raises(DatasetError, match="train_rotations"):
        Omniglot(train_rotations=3)


@pytest.mark.parametrize("folds", [0, 2])
def test_omniglot_validation_holds_no_rotated_classes(omniglot_root: Path, folds: int):
    """Validation is carved by alphabet with every rotation of its characters held out of
    training, and keeps only the unrotated ones, as test has (val_holdout and val_folds)."""
    tf = build_transform(size=8, channels=1, mean=[0.5], std=[0.5])
    dm = DMLDataModule(Omniglot(train_rotations=4), tf, tf, 2, 2, val_holdout=1, val_folds=folds)
    splits = dm.split_records()
    held_out = {r.group for r in splits["val"]}
    plain = DMLDataModule(Omniglot(), tf, tf, 2, 2, val_holdout=1, val_folds=folds)
    unrotated = [(r.item[0], r.group) for r in splits["val"] if r.item[1] == 0]
    assert unrotated == [(r.item, r.group) for r in plain.split_records()["val"]]
    assert len(unrotated) == len(splits["val"])  # the same alphabets' images, none rotated
    assert held_out and not any(r.group in held_out for r in splits["train"])
    assert {r.label.rpartition("@")[2] for r in splits["train"]} == {"0", "90", "180", "270"}
