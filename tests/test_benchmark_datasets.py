"""The benchmark datasets on miniature copies of their official on-disk formats."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dml.cli.data import main as dml_data
from dml.data import DatasetError, DMLDataModule
from dml.data.cars196 import Cars196
from dml.data.cub200 import CUB200
from dml.data.inshop import InShop
from dml.data.records import class_counts, summarize
from dml.data.sop import StanfordOnlineProducts
from dml.data.transforms import build_transform

# Miniatures keep the real split boundaries: CUB ids 1-100 train, Cars 1-98 train.
CUB_CLASSES = (1, 2, 3, 4, 5, 6, 101, 102, 103, 104)
CARS_CLASSES = (1, 2, 3, 4, 5, 6, 98, 99, 100, 196)
SOP_TRAIN, SOP_TEST = range(1, 7), range(7, 11)
INSHOP_TRAIN, INSHOP_TEST = range(1, 7), range(7, 11)


def n_images(class_id: int) -> int:
    """Unequal class sizes: 2, 3 or 4 images."""
    return 2 + class_id % 3


def write_jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_cub(root: Path) -> Path:
    images, labels, classes = [], [], []
    for c in CUB_CLASSES:
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for i in range(n_images(c)):
            image_id = len(images) + 1
            images.append(f"{image_id} {folder}/Bird_{c}_{i}.jpg")
            labels.append(f"{image_id} {c}")
            write_jpg(root / "images" / folder / f"Bird_{c}_{i}.jpg", image_id)
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def make_cars(root: Path) -> Path:
    from scipy.io import savemat

    entries = []
    for c in CARS_CLASSES:
        for _ in range(n_images(c)):
            name = f"car_ims/{len(entries) + 1:06d}.jpg"
            write_jpg(root / name, len(entries))
            entries.append((name, np.array([[c]], dtype=np.uint8)))
    fields = [("relative_im_path", "O"), ("bbox_x1", "O"), ("class", "O"), ("test", "O")]
    annotations = np.zeros((1, len(entries)), dtype=fields)
    for i, (name, c) in enumerate(entries):
        annotations[0, i] = (name, np.array([[1]]), c, np.array([[i % 2]]))
    savemat(root / "cars_annos.mat", {"annotations": annotations})
    return root


def make_sop(root: Path) -> Path:
    image_id = 0
    for split, classes in (("train", SOP_TRAIN), ("test", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for i in range(n_images(c)):
                image_id += 1
                path = f"{'bicycle' if c % 2 else 'chair'}_final/{c}_{i}.JPG"
                write_jpg(root / path, image_id)
                lines.append(f"{image_id} {c} {1 + c % 2} {path}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_inshop(root: Path, gallery_only_item: bool = False) -> Path:
    """Train items: n_images(c) images; test items: 1 query + 2 gallery images each."""
    rows = []
    for c in INSHOP_TRAIN:
        rows += [(f"id_{c:08d}", i, "train") for i in range(n_images(c))]
    for c in INSHOP_TEST:
        rows += [(f"id_{c:08d}", 0, "query"), (f"id_{c:08d}", 1, "gallery")]
        rows += [(f"id_{c:08d}", 2, "gallery")]
    if gallery_only_item:
        rows += [("id_00000000", 0, "gallery")]  # a distractor with no query
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    for n, (item, i, status) in enumerate(rows):
        name = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        write_jpg(root / "Img" / name, n)
        lines.append(f"{name} {item} {status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


BUILDERS = {"cub200": make_cub, "cars196": make_cars, "sop": make_sop, "inshop": make_inshop}


def make_all(base: Path) -> Path:
    """Every miniature benchmark under ``base/<name>`` (the $DML_DATA_DIR layout)."""
    for name, build in BUILDERS.items():
        build(base / name)
    return base


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_all(tmp_path_factory.mktemp("benchmarks"))


def expected(classes, min_id: int = 0, max_id: int = 10**9) -> dict[str, int]:
    kept = [c for c in classes if min_id <= c <= max_id]
    return {"classes": len(kept), "images": sum(n_images(c) for c in kept)}


def test_cub_standard_split(data_dir):
    splits = CUB200(data_dir / "cub200").splits()
    assert summarize(splits) == {
        "train": expected(CUB_CLASSES, max_id=100),
        "test": expected(CUB_CLASSES, min_id=101),
    }
    first = splits["train"][0]
    assert first.label == "001.Bird_1" and Path(first.item).is_file()
    assert class_counts(splits["test"])["102.Bird_102"] == n_images(102)


def test_cars_standard_split(data_dir):
    splits = Cars196(data_dir / "cars196").splits()
    assert summarize(splits) == {
        "train": expected(CARS_CLASSES, max_id=98),
        "test": expected(CARS_CLASSES, min_id=99),
    }
    assert {r.label for r in splits["test"]} == {"099", "100", "196"}
    assert Path(splits["train"][0].item).name == "000001.jpg"


def test_sop_split(data_dir):
    splits = StanfordOnlineProducts(data_dir / "sop").splits()
    assert summarize(splits) == {"train": expected(SOP_TRAIN), "test": expected(SOP_TEST)}


def test_inshop_query_gallery_split(data_dir):
    splits = InShop(data_dir / "inshop").splits()
    n = len(INSHOP_TEST)
    assert summarize(splits) == {
        "train": expected(INSHOP_TRAIN),
        "query": {"classes": n, "images": n},
        "gallery": {"classes": n, "images": 2 * n},
    }
    assert Path(splits["query"][0].item).is_file()


def test_inshop_flat_layout(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    flat = tmp_path / "flat"
    (root / "Img").rename(flat)
    (root / "Eval" / "list_eval_partition.txt").rename(flat / "list_eval_partition.txt")
    assert summarize(InShop(flat).splits())["gallery"]["images"] == 2 * len(INSHOP_TEST)


def test_datasets_default_to_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("DML_DATA_DIR", str(data_dir))
    for source in (CUB200(), Cars196(), StanfordOnlineProducts(), InShop()):
        assert source.root.parent == data_dir
        assert source.splits()["train"]


def test_datamodule_carves_validation_classes_and_loads(data_dir):
    transform = build_transform(16, resize=18)
    dm = DMLDataModule(InShop(data_dir / "inshop"), transform, transform, 2, 2, val_holdout=2)
    dm.setup()
    assert set(dm.datasets) == {"train", "val", "query", "gallery"}
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(val.classes) == 2 and not set(val.classes) & set(train.classes)
    assert len(train.classes) == len(INSHOP_TRAIN) - 2
    x, _, index = dm.datasets["query"][0]
    assert x.shape == (3, 16, 16) and index == 0
    assert len(dm.test_dataloader()) == 2  # query and gallery, apart


def test_inshop_query_and_gallery_labels_agree(tmp_path):
    root = make_inshop(tmp_path / "inshop", gallery_only_item=True)
    transform = build_transform(8)
    dm = DMLDataModule(InShop(root), transform, transform, 2, 2)
    dm.setup()
    query, gallery = dm.datasets["query"], dm.datasets["gallery"]
    for i, q in enumerate(query.records):
        j = next(j for j, g in enumerate(gallery.records) if g.label == q.label)
        assert query.labels[i] == gallery.labels[j], q.label


# ---- validation of the files: missing file -> its name and the layout; bad line -> file:line --
def test_missing_files_name_the_file_and_layout(tmp_path):
    cases = [
        (CUB200, "images.txt", "image_class_labels.txt"),
        (Cars196, "cars_annos.mat", "car_ims"),
        (StanfordOnlineProducts, "Ebay_train.txt", "super_class_id"),
        (InShop, "Eval/list_eval_partition.txt", "evaluation_status"),
    ]
    for cls, missing, layout_word in cases:
        pattern = rf"missing file {tmp_path}/{missing}; expected layout: .*{layout_word}"
        with pytest.raises(DatasetError, match=pattern):
            cls(tmp_path).splits()


def corrupt(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


PARTITION = "Eval/list_eval_partition.txt"


@pytest.mark.parametrize(
    ("dataset", "file", "line", "text", "message"),
    [
        ("cub200", "images.txt", 3, "3", "expected 2 fields"),
        ("cub200", "image_class_labels.txt", 2, "2 x", "class_id must be an integer"),
        ("cub200", "image_class_labels.txt", 2, "1 1", "image_id 1 repeats line 1"),
        ("cub200", "image_class_labels.txt", 4, "4 57", "class 57 is not in classes.txt"),
        ("cub200", "classes.txt", 1, "1 a b", "expected 2 fields"),
        ("sop", "Ebay_train.txt", 1, "id class super path", "expected the header"),
        ("sop", "Ebay_test.txt", 3, "x 7 1 bicycle_final/7_1.JPG", "image_id must be an int"),
        ("sop", "Ebay_test.txt", 2, "100 1 2 bicycle_final/7_0.JPG", "class 1 is also in Ebay"),
        ("inshop", PARTITION, 1, "7", "expected the number of images"),
        ("inshop", PARTITION, 3, "a b", "expected 3 fields"),
        ("inshop", PARTITION, 4, "img/x.jpg id_1 val", "evaluation_status must be one of"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, dataset, file, line, text, message):
    root = BUILDERS[dataset](tmp_path / dataset)
    corrupt(root / file, line, text)
    source = {"cub200": CUB200, "sop": StanfordOnlineProducts, "inshop": InShop}[dataset]
    with pytest.raises(DatasetError, match=rf"^{root}/{file}:{line}: {message}"):
        source(root).splits()


def test_inshop_train_item_in_query_is_rejected(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    path = root / "Eval" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    query = next(n for n, t in enumerate(lines) if t.endswith(" query"))
    name = lines[query].split()[0]
    lines[query] = f"{name} id_00000001 query"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf":{query + 1}: query item id_00000001 is also a tr"):
        InShop(root).splits()


def test_cub_image_without_label_is_named(tmp_path):
    root = make_cub(tmp_path / "cub")
    labels = root / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"images.txt:1: image 1 has no line in image_class"):
        CUB200(root).splits()


def test_cars_bad_annotations(tmp_path):
    from scipy.io import savemat

    root = make_cars(tmp_path / "cars")
    mat = root / "cars_annos.mat"
    bad = np.zeros((1, 2), dtype=[("relative_im_path", "O"), ("class", "O")])
    bad[0, 0] = ("car_ims/000001.jpg", np.array([[1]]))
    bad[0, 1] = ("car_ims/000002.jpg", np.array([[0]]))
    savemat(mat, {"annotations": bad})
    with pytest.raises(DatasetError, match=r"cars_annos.mat: annotation 2: class is not a posit"):
        Cars196(root).splits()
    savemat(mat, {"annotations": np.zeros((1, 1), dtype=[("class", "O")])})
    with pytest.raises(DatasetError, match=r"lacks field\(s\) \['relative_im_path'\]"):
        Cars196(root).splits()
    mat.write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match=r"cars_annos.mat: not a readable MATLAB file"):
        Cars196(root).splits()


def test_missing_images_are_counted_and_named(tmp_path):
    root = make_sop(tmp_path / "sop")
    for name in ("2_0", "2_1", "2_2", "2_3", "4_0"):  # class 2 has 4 images, class 4 has 3
        (root / "chair_final" / f"{name}.JPG").unlink()
    pattern = r"5 image\(s\) listed in .*Ebay_train.txt not found: .*/2_0.JPG, .* and 2 more"
    with pytest.raises(DatasetError, match=pattern):
        StanfordOnlineProducts(root).splits()


# ---- dml-data ----------------------------------------------------------------------------
def test_dml_data_prints_the_splits_as_training_sees_them(data_dir, capsys):
    dml_data(["data=cub200", f"data.root={data_dir / 'cub200'}", "data.val_holdout=2"])
    out = json.loads(capsys.readouterr().out)
    train = expected(CUB_CLASSES, max_id=100)
    assert out["source"] == "dml.data.cub200.CUB200" and out["root"] == str(data_dir / "cub200")
    assert list(out["splits"]) == ["train", "val", "test"]
    assert out["splits"]["val"]["classes"] == 2
    assert out["splits"]["train"]["classes"] == train["classes"] - 2
    assert out["splits"]["train"]["images"] + out["splits"]["val"]["images"] == train["images"]


def test_dml_data_inshop_lists_query_and_gallery(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("DML_DATA_DIR", str(data_dir))
    dml_data(["data=inshop", "data.val_holdout=0"])
    assert list(json.loads(capsys.readouterr().out)["splits"]) == ["train", "query", "gallery"]


def test_dml_data_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        dml_data(["data=sop", f"data.root={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: missing file {tmp_path}/Ebay_train.txt") and "\n" not in err
    with pytest.raises(SystemExit):
        dml_data(["data=no_such_dataset"])
    assert "no_such_dataset" in capsys.readouterr().err
