"""User-facing data errors: one line, naming a real config key and the fix."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import queue
import re
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dml.cli.data import main as dml_data
from dml.data import DMLDataModule, Record, carve_validation
from dml.data import archive as archive_module
from dml.data.archive import extract_once
from dml.data.folder import CSVImages
from dml.data.omniglot import Omniglot
from dml.data.synthetic import Synthetic
from dml.data.transforms import build_transform
from dml.errors import ConfigError, DatasetError

from .conftest import REPO, write_png

HOLDOUT_RULE = "an integer is a count of groups, a float a fraction < 1"


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``dml-data args`` prints before exiting with code 2."""
    with pytest.raises(SystemExit) as info:
        dml_data(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.strip()


# ---- data.val_holdout ----------------------------------------------------------------------
def grouped_records() -> list[Record]:
    return [Record(i, f"g{i % 6}/c{i % 12}", f"g{i % 6}") for i in range(120)]


@pytest.mark.parametrize("holdout", [1.0, 1.5, -0.1, -1, True, "3"])
def test_val_holdout_that_is_neither_a_count_nor_a_fraction_is_refused(holdout):
    with pytest.raises(ConfigError) as info:
        carve_validation(grouped_records(), holdout)
    assert str(info.value) == (
        f"data.val_holdout must be an integer >= 0 or a float in [0, 1), got {holdout!r}: "
        f"{HOLDOUT_RULE} (data.val_holdout=1 holds out one group, 0.1 a tenth of them)"
    )


def test_val_holdout_counts_and_fractions_keep_working():
    assert len({r.group for r in carve_validation(grouped_records(), 1)[1]}) == 1
    assert len({r.group for r in carve_validation(grouped_records(), 4)[1]}) == 4
    assert len({r.group for r in carve_validation(grouped_records(), 0.5)[1]}) == 3


def test_val_holdout_leaving_no_group_says_the_valid_range():
    with pytest.raises(DatasetError) as info:
        carve_validation(grouped_records(), 0.01)
    assert str(info.value) == (
        "data.val_holdout=0.01 holds out 0 of the 6 training groups, but validation and "
        "training each need at least one: set data.val_holdout to a count from 1 to 5, or 0 "
        "for no validation"
    )


def test_dml_data_refuses_val_holdout_one_point_zero(capsys):
    err = cli_error(["data=synthetic", "data.val_holdout=1.0"], capsys)
    assert err.startswith("error: data.val_holdout must be an integer >= 0 or a float in [0, 1)")
    assert HOLDOUT_RULE in err


# ---- DMLDataModule arguments ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        (
            "batch_p",
            "abc",
            "an integer >= 1 (the classes per batch), got 'abc': set e.g. data.batch_p=32",
        ),
        ("batch_p", 0, "an integer >= 1 (the classes per batch), got 0: set e.g. data.batch_p=32"),
        (
            "batch_k",
            True,
            "an integer >= 1 (the images per class), got True: set e.g. data.batch_k=4",
        ),
        (
            "batch_k",
            2.0,
            "an integer >= 1 (the images per class), got 2.0: set e.g. data.batch_k=4",
        ),
        (
            "num_workers",
            -1,
            "an integer >= 0 (the DataLoader worker processes), got -1: set "
            "e.g. data.num_workers=0",
        ),
        (
            "eval_batch_size",
            0,
            "an integer >= 1 (the images per eval batch), got 0: set e.g. data.eval_batch_size=256",
        ),
        (
            "val_holdout",
            1.0,
            "an integer >= 0 or a float in [0, 1), got 1.0: "
            + HOLDOUT_RULE
            + " (data.val_holdout=1 holds out one group, 0.1 a tenth of them)",
        ),
    ],
)
def test_datamodule_refuses_bad_arguments_before_training(key, value, rule):
    tf = build_transform(size=16, channels=1, mean=[0.5], std=[0.5])
    with pytest.raises(ConfigError) as info:
        DMLDataModule(Synthetic(), tf, tf, **{key: value})
    assert str(info.value) == f"data.{key} must be {rule}"


def test_dml_data_refuses_a_string_batch_p(capsys):
    assert cli_error(["data=synthetic", "data.batch_p=abc"], capsys) == (
        "error: data.batch_p must be an integer >= 1 (the classes per batch), got 'abc': "
        "set e.g. data.batch_p=32"
    )


# ---- config keys named in messages ---------------------------------------------------------
def test_missing_data_dir_names_the_real_key(monkeypatch):
    monkeypatch.delenv("DML_DATA_DIR", raising=False)
    with pytest.raises(DatasetError) as info:
        Omniglot()
    assert str(info.value) == (
        "no location for dataset 'omniglot': set data.source.root=PATH or the environment "
        "variable DML_DATA_DIR (the folder that holds 'omniglot/')"
    )


def test_missing_omniglot_archive_names_real_keys(tmp_path: Path):
    with pytest.raises(DatasetError) as info:
        Omniglot(root=tmp_path).splits()
    assert str(info.value) == (
        f"Omniglot archive not found: {tmp_path}/images_background.zip: put "
        "images_background.zip and images_evaluation.zip there, set data.source.root=PATH to "
        "the folder that holds them (or DML_DATA_DIR=DIR with them in DIR/omniglot), or pass "
        "data.source.download=true on a machine with internet"
    )


def config_keys_named_in(path: Path) -> set[str]:
    """The ``data.*`` config keys a source file mentions (not module names like dml.data.x)."""
    return set(re.findall(r"(?<![\w.])data(?:\.[a-z_]+)+", path.read_text()))


def test_every_key_named_under_dml_data_exists_in_a_data_config():
    configs = [
        OmegaConf.to_container(OmegaConf.load(p)) for p in (REPO / "conf" / "data").rglob("*.yaml")
    ]

    def exists(key: str) -> bool:
        for node in configs:
            for part in key.split(".")[1:]:
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return True
        return False

    named = {
        (p.name, key)
        for p in (REPO / "dml" / "data").glob("*.py")
        for key in config_keys_named_in(p)
    }
    assert ("source.py", "data.source.root") in named
    assert sorted((f, k) for f, k in named if not exists(k)) == []


# ---- the csv data config -------------------------------------------------------------------
def write_csv(folder: Path, rows: list[tuple[str, str, str]], images: bool = True) -> Path:
    """``folder/data.csv`` listing ``rows`` (path, label, split); writes the images if asked."""
    csv = folder / "data.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    for seed, (path, _, _) in enumerate(rows):
        if images:
            write_png(folder / path, seed)
    return csv


def class_rows(split: str, classes: range, per_class: int = 2) -> list[tuple[str, str, str]]:
    return [(f"img/c{c}_{i}.png", f"c{c}", split) for c in classes for i in range(per_class)]


def test_csv_data_config_composes_and_lists_the_splits(tmp_path: Path):
    csv = write_csv(tmp_path, class_rows("train", range(10)) + class_rows("test", range(10, 13)))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=csv", f"data.source.csv_path={csv}"])
    splits = instantiate(cfg.data).split_records()
    assert {s: len({r.label for r in recs}) for s, recs in splits.items()} == {
        "train": 9,
        "val": 1,
        "test": 3,
    }
    assert "data=csv data.source.csv_path=FILE" in (REPO / "conf/data/folder.yaml").read_text()


# ---- CSVImages -----------------------------------------------------------------------------
def test_csv_with_missing_images_names_the_csv_and_some_paths(tmp_path: Path):
    csv = write_csv(
        tmp_path, class_rows("train", range(3)) + class_rows("test", range(3, 5)), images=False
    )
    with pytest.raises(DatasetError) as info:
        CSVImages(csv).splits()
    assert str(info.value) == (
        f"10 image(s) listed in {csv} not found: {tmp_path}/img/c0_0.png, "
        f"{tmp_path}/img/c0_1.png, {tmp_path}/img/c1_0.png and 7 more (fix the paths, or set "
        "data.source.image_root=DIR to the folder relative paths start from; default: the "
        "CSV's folder)"
    )


@pytest.mark.parametrize(
    ("eval_splits", "message"),
    [
        (("val",), "no test rows: add rows with split test, or query and gallery"),
        (
            ("query",),
            "query rows but no gallery rows: add rows with split gallery, or make the "
            "query rows split test",
        ),
        (
            ("gallery",),
            "gallery rows but no query rows: add rows with split query, or make the "
            "gallery rows split test",
        ),
        ((), "no test rows: add rows with split test, or query and gallery"),
    ],
)
def test_csv_without_a_complete_test_split_is_an_error(
    tmp_path: Path, capsys, eval_splits, message
):
    rows = class_rows("train", range(3))
    for n, split in enumerate(eval_splits):
        rows += class_rows(split, range(3 + 2 * n, 5 + 2 * n))
    csv = write_csv(tmp_path, rows)
    with pytest.raises(DatasetError) as info:
        CSVImages(csv).splits()
    assert str(info.value) == f"{csv}: {message}"
    args = ["data=csv", f"data.source.csv_path={csv}", "data.val_holdout=0"]
    assert cli_error(args, capsys) == f"error: {csv}: {message}"


def test_csv_without_train_rows_is_an_error(tmp_path: Path):
    csv = write_csv(tmp_path, class_rows("test", range(3)))
    with pytest.raises(DatasetError, match=rf"^{csv}: no train rows: add rows with split train$"):
        CSVImages(csv).splits()


def test_dml_data_reports_missing_csv_images_in_one_line(tmp_path: Path, capsys):
    csv = write_csv(
        tmp_path, class_rows("train", range(3)) + class_rows("test", range(3, 5)), images=False
    )
    err = cli_error(["data=csv", f"data.source.csv_path={csv}"], capsys)
    assert err.startswith(f"error: 10 image(s) listed in {csv} not found: {tmp_path}/img/c0_0.png")


def test_a_cache_dir_that_is_a_file_is_one_line(omniglot_root: Path, monkeypatch, capsys):
    cache = omniglot_root / "not_a_folder"
    cache.write_text("")
    monkeypatch.setenv("DML_CACHE_DIR", str(cache))
    err = cli_error(["data=omniglot"], capsys)
    assert err == (f"error: cache folder {cache} cannot be created (FileExistsError): set "
                   "DML_CACHE_DIR to a writable folder")


def test_dml_data_names_listed_files_that_are_not_images(tmp_path: Path, capsys):
    csv = write_csv(tmp_path, class_rows("train", range(10)) + class_rows("test", range(10, 12)))
    (tmp_path / "img" / "c1_0.png").write_text("root:x:0:0:root:/root:/bin/bash\n")
    err = cli_error(["data=csv", f"data.source.csv_path={csv}"], capsys)
    assert err == (f"error: 1 listed file(s) cannot be read as images: {tmp_path}/img/c1_0.png "
                   "(UnidentifiedImageError) (replace or remove them)")


# ---- archives ------------------------------------------------------------------------------
def make_zip(path: Path, n_files: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(n_files):
            z.writestr(f"root/f{i:04d}.txt", f"file {i}\n" * (50 + i % 7))
    return path


def test_corrupt_deflate_stream_is_a_dataset_error_and_leaves_nothing(tmp_path: Path):
    archive = make_zip(tmp_path / "a.zip", 3)
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[1]
    data = bytearray(archive.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + o :][:2], "little") for o in (26, 28)
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start] |= 0b110  # deflate block type 3: reserved, invalid
    archive.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as info_:
        extract_once(archive, cache / "a")
    assert str(info_.value) == (
        f"cannot unpack {archive}: Error -3 while decompressing data: invalid block type "
        "(the archive is corrupt; replace it)"
    )
    assert [p.name for p in cache.rglob("*")] == [".a.lock"]


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    archive = make_zip(tmp_path / "a.zip", 5)
    cache = tmp_path / "cache"

    copy_member = archive_module.copy_member

    def interrupted(archive, z, info, target, allowed) -> None:
        copy_member(archive, z, info, target, allowed)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(archive_module, "copy_member", interrupted)
        with pytest.raises(KeyboardInterrupt):
            extract_once(archive, cache / "a")
    assert [p.name for p in cache.rglob("*")] == [".a.lock"]
    assert len(list(extract_once(archive, cache / "a").rglob("*.txt"))) == 5


def zip_bomb(path: Path, member: str, mib: int = 64) -> Path:
    """A zip holding ``mib`` MiB of zeros, deflated (~1000:1: 64 KiB on disk for 64 MiB)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open(member, "w") as f:
        for _ in range(mib):
            f.write(bytes(1 << 20))
    return path


def with_central_field(archive: Path, offset: int, value: int) -> Path:
    """``archive`` (one member) with the 4-byte field at ``offset`` of its central directory
    entry set to ``value``: 20 the compressed size, 24 the uncompressed size."""
    data = bytearray(archive.read_bytes())
    at = data.index(b"PK\x01\x02") + offset
    data[at : at + 4] = value.to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    return archive


def test_a_zip_bomb_is_refused_from_its_central_directory_in_one_line(omniglot_root, capsys):
    archive = zip_bomb(omniglot_root / "images_background.zip", "images_background/zeros.bin")
    assert archive.stat().st_size < 200_000
    err = cli_error(["data=omniglot"], capsys)
    assert re.fullmatch(
        rf"error: refusing to unpack {archive}: member images_background/zeros.bin unpacks to "
        r"67,108,864 bytes from [\d,]+ \(more than dml.data.archive.MAX_RATIO=100 times; a zip "
        r"bomb\?\)", err), err
    assert [p for p in (omniglot_root.parent.parent / "cache").rglob("*") if p.is_file()] == [
        omniglot_root.parent.parent / "cache" / "omniglot" / ".images_background.lock"]


def test_a_header_that_lies_about_sizes_buys_no_more_bytes(tmp_path: Path):
    # the central directory claims 64 MiB compressed (ratio 1): the next member's offset (here
    # the end of the file) bounds the real compressed size
    archive = with_central_field(zip_bomb(tmp_path / "a.zip", "zeros.bin"), 20, 64 << 20)
    with zipfile.ZipFile(archive) as z:
        assert z.infolist()[0].compress_size == z.infolist()[0].file_size == 64 << 20
    with pytest.raises(DatasetError, match=rf"^refusing to unpack {archive}: member zeros.bin "
                       r"unpacks to 67,108,864 bytes from \d{2},\d{3} \(more than"):
        extract_once(archive, tmp_path / "cache" / "a")
    # it claims 1 KiB unpacked: no more than that is written, and the CRC check fails
    archive = with_central_field(zip_bomb(tmp_path / "b.zip", "zeros.bin"), 24, 1024)
    with pytest.raises(DatasetError, match=rf"^cannot unpack {archive}: Bad CRC-32"):
        extract_once(archive, tmp_path / "cache" / "b")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == [".a.lock", ".b.lock"]


def test_unpacking_stops_at_the_bound_while_writing(tmp_path: Path, monkeypatch):
    """The bound holds on the bytes written, not only on what the headers declare."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:  # stored, ratio 1: within the real bounds
        z.writestr("noise.bin", os.urandom(3 << 20))
    real = archive_module.member_bounds
    monkeypatch.setattr(archive_module, "member_bounds",
                        lambda a, z: dict.fromkeys(real(a, z), 1 << 20))
    with pytest.raises(DatasetError, match=rf"^refusing to unpack {archive}: member noise.bin "
                       r"unpacks to more than the 1,048,576 bytes its header and size allow"):
        extract_once(archive, tmp_path / "cache" / "a")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == [".a.lock"]


def test_the_real_omniglot_archives_are_within_the_bounds():
    real = Path(os.environ.get("DML_DATA_DIR", "/nonexistent")) / "omniglot"
    archives = sorted(real.glob("images_*.zip"))
    if not archives:
        pytest.skip("no real Omniglot archives in $DML_DATA_DIR/omniglot")
    for archive in archives:
        with zipfile.ZipFile(archive) as z:
            assert sum(archive_module.member_bounds(archive, z).values()) < 10 << 20


def extract_and_list(archive: Path, dest: Path, barrier, results) -> None:
    """Child process: extract at the same moment as the others, report {file: md5}."""
    barrier.wait()
    out = extract_once(archive, dest)
    results.put(
        {
            str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file()
        }
    )


def test_concurrent_extractions_share_one_result(tmp_path: Path):
    archive = make_zip(tmp_path / "a.zip", 400)
    dest = tmp_path / "cache" / "a"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=extract_and_list, args=(archive, dest, barrier, results))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    listings = []
    with contextlib.suppress(queue.Empty):  # a crashed child reports nothing
        for _ in procs:
            listings.append(results.get(timeout=30))
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(listings) == 3 and listings[0] == listings[1] == listings[2]
    assert len(listings[0]) == 401  # 400 files and the .extracted marker
    assert sorted(p.name for p in dest.parent.iterdir()) == [".a.lock", extract_once(archive,
                                                                                    dest).name]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.train_transform.channels=2"], "data.train_transform.channels must be 1 or 3"),
        (["data.train_transform.mean=[0.5,0.5]"], "data.train_transform.mean and .std need 1"),
    ],
)
def test_bad_transforms_are_one_line_errors_through_dml_data(overrides, message, capsys):
    from dml.cli.data import main

    with pytest.raises(SystemExit) as info:
        main(["data=synthetic", *overrides])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")


def test_download_checks_the_md5_and_leaves_nothing_behind(tmp_path: Path):
    """The real download code on a local file:// URL (no network needed)."""
    from dml.data.archive import download, md5sum

    src = tmp_path / "src.zip"
    src.write_bytes(b"archive bytes")
    dest = tmp_path / "data" / "omniglot" / "images_background.zip"
    with pytest.raises(DatasetError, match=r"checksum mismatch for file://.*expected 0+$"):
        download(src.as_uri(), dest, md5="0" * 32)
    assert not dest.parent.exists() or not any(dest.parent.iterdir())
    assert download(src.as_uri(), dest, md5=md5sum(src)) == dest
    assert dest.read_bytes() == b"archive bytes"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
