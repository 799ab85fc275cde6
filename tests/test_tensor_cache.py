"""The decoded tensor cache (data.cache=true) and the batched training augmentation (issue 11)."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomAffine

from dml.data import DMLDataModule
from dml.data.batch_transforms import (
    affine_batch,
    augment_batch,
    batch_generator,
    sample_affine,
    to_normalized,
)
from dml.data.omniglot import Omniglot
from dml.data.tensor_cache import (
    cache_identity,
    cache_path,
    cached_images,
    changed_files,
    decode_all,
)
from dml.data.transforms import build_transform
from dml.errors import ConfigError, DatasetError
from dml.train.run import train

from .training_utils import tiny_config

OMNIGLOT_TF = dict(size=28, resize=28, channels=1, invert=True, mean=[0.1], std=[0.3])
AFFINE = dict(degrees=10, translate=0.1, scale=[0.9, 1.1], fill=255)


def train_params(**kw):
    return build_transform(train=True, **{**OMNIGLOT_TF, **AFFINE, **kw}).params


def eval_params():
    return build_transform(train=False, **OMNIGLOT_TF).params


def train_records(root: Path):
    return Omniglot(root).splits()["train"]


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "tensors").glob("*.pt"))


def rewrite_member(archive: Path, index: int, data: bytes) -> str:
    """Replace the ``index``-th PNG of ``archive`` by ``data``; return its name."""
    with zipfile.ZipFile(archive) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    pngs = [i for i, (info, _) in enumerate(members) if info.filename.endswith(".png")]
    target = members[pngs[index]][0].filename
    with zipfile.ZipFile(archive, "w") as z:
        for info, content in members:
            z.writestr(info.filename, data if info.filename == target else content)
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    return target


def png_bytes(value: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


class CountingLoads:
    """Wraps a source's ``load`` to count decodes."""

    def __init__(self, source) -> None:
        self.calls = 0
        self.inner = source.load
        source.load = self

    def __call__(self, item):
        self.calls += 1
        return self.inner(item)


# ---- the cache: miss, hit, stale, corrupt --------------------------------------------------
def test_cache_miss_decodes_once_and_hit_reads_the_file(omniglot_root: Path, tmp_path: Path):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    loads = CountingLoads(source)
    first = cached_images(source, "train", records, eval_params())
    assert loads.calls == len(records) and first.dtype == torch.uint8
    assert first.shape == (len(records), 1, 28, 28)
    assert len(cache_files(tmp_path)) == 1
    again = cached_images(source, "train", records, eval_params())
    assert loads.calls == len(records)  # a hit decodes nothing
    assert torch.equal(first, again)
    # the cached pixels are the PIL pipeline's (Grayscale -> Resize -> CenterCrop)
    expected = np.asarray(
        build_transform(train=False, **OMNIGLOT_TF).transforms[2](
            build_transform(train=False, **OMNIGLOT_TF).transforms[1](
                Image.open(records[3].item).convert("L")
            )
        )
    )
    assert np.array_equal(first[3, 0].numpy(), expected)


def test_changed_archive_makes_the_cache_stale_and_it_is_rebuilt(
    omniglot_root: Path, tmp_path: Path
):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    before = cached_images(source, "train", records, eval_params())
    path = cache_files(tmp_path)[0]
    name = rewrite_member(omniglot_root / "images_background.zip", 0, png_bytes(128))
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]  # unpacked again: the archive changed
    loads = CountingLoads(source)
    after = cached_images(source, "train", records, eval_params())
    assert loads.calls == len(records)  # rebuilt, not read
    changed = [i for i, r in enumerate(records) if r.item.endswith(name)]
    assert len(changed) == 1
    assert (after[changed[0]] == 128).all() and not (before[changed[0]] == 128).all()
    assert torch.equal(after, decode_all(Omniglot(omniglot_root), records, eval_params()))
    # the records name the new unpacking, so the cache is a new file; the old one stays, as the
    # old unpacking does, for a run that may still read it
    assert len(cache_files(tmp_path)) == 2 and path in cache_files(tmp_path)
    assert torch.equal(cached_images(source, "train", records, eval_params()), after)


def test_touched_archive_alone_invalidates_the_cache(omniglot_root: Path, caplog):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    cached_images(source, "train", records, eval_params())
    archive = omniglot_root / "images_background.zip"
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same second, same size
    loads = CountingLoads(source)
    with caplog.at_level(logging.WARNING, logger="dml.data.tensor_cache"):
        cached_images(source, "train", records, eval_params())
    assert loads.calls == len(records)
    assert f"changed on disk: {archive} and 0 more file(s)" in caplog.text


def test_an_edited_image_file_invalidates_the_cache(omniglot_root: Path, caplog):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    before = cached_images(source, "train", records, eval_params())
    Path(records[5].item).write_bytes(png_bytes(7))
    with caplog.at_level(logging.WARNING, logger="dml.data.tensor_cache"):
        after = cached_images(source, "train", records, eval_params())
    assert (after[5] == 7).all() and not torch.equal(before[5], after[5])
    assert f"changed on disk: {records[5].item} and 0 more file(s)" in caplog.text


def test_changed_files_names_each_changed_entry_in_order():
    old = [[["a.zip", 1, "md5"]], [["x.png", 1, 2], ["y.png", 1, 2], ["z.png", 1, 2]]]
    new = [[["a.zip", 1, "md5"]], [["x.png", 1, 3], ["y.png", 1, 2], ["z.png", 2, 2]]]
    assert changed_files(old, new) == ["x.png", "z.png"]
    assert changed_files(old, old) == []
    assert changed_files(old, [old[0], old[1][:2]]) == []  # a file removed: no one file to name
    assert changed_files(None, new) == []  # a cache file written without a fingerprint


def test_a_same_size_image_put_back_with_its_old_mtime_invalidates_the_cache(omniglot_root: Path):
    """As ``cp -p`` or ``rsync -a`` leave it: same size, same mtime, other bytes (ctime moved)."""
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    path = Path(records[5].item)
    path.write_bytes(png_bytes(7))
    assert (cached_images(source, "train", records, eval_params())[5] == 7).all()
    stat = path.stat()
    assert len(png_bytes(8)) == stat.st_size
    path.write_bytes(png_bytes(8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert (cached_images(source, "train", records, eval_params())[5] == 8).all()


def test_the_cached_training_split_cannot_be_evaluated_raw(tmp_path: Path):
    from hydra.utils import instantiate

    datamodule = instantiate(tiny_config(tmp_path, "data.cache=true").data)
    datamodule.setup()
    with pytest.raises(DatasetError, match=r"^the cached training split .* data.cache=false$"):
        datamodule.eval_dataloader("train")
    assert datamodule.eval_dataloader("test")


@pytest.mark.parametrize(
    "change",
    [
        {"size": 24, "resize": 24},
        {"resize": 32},
        {"channels": 3, "mean": [0.1] * 3, "std": [0.3] * 3},
    ],
)
def test_decode_settings_name_a_different_cache_file(omniglot_root: Path, tmp_path: Path, change):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    base = cached_images(source, "train", records, train_params())
    other = cached_images(source, "train", records, train_params(**change))
    assert len(cache_files(tmp_path)) == 2
    assert other.shape != base.shape


@pytest.mark.parametrize(
    "setting", [{"merge_characters": 2}, {"train_rotations": 4}, {"merge_seed": 3}]
)
def test_source_options_name_a_different_cache_file(omniglot_root: Path, setting):
    params = eval_params()
    plain = Omniglot(omniglot_root)
    changed = Omniglot(omniglot_root, **setting)
    a = cache_identity(plain, "train", plain.splits()["train"], params)
    b = cache_identity(changed, "train", changed.splits()["train"], params)
    assert cache_path(a) != cache_path(b)


def test_rotated_classes_are_cached_rotated(omniglot_root: Path):
    source = Omniglot(omniglot_root, train_rotations=4)
    records = source.splits()["train"]
    images = cached_images(source, "train", records, eval_params())
    for i in (0, len(records) - 1):
        pixels = eval_params().decode(source.load(records[i].item))
        assert np.array_equal(images[i].numpy(), pixels)


@pytest.mark.parametrize("damage", [b"", b"not a torch file", "truncate", "foreign"])
def test_corrupt_cache_file_is_rebuilt(omniglot_root: Path, tmp_path: Path, damage, caplog):
    source = Omniglot(omniglot_root)
    records = source.splits()["train"]
    good = cached_images(source, "train", records, eval_params())
    path = cache_files(tmp_path)[0]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"images": torch.zeros(3, 1, 28, 28, dtype=torch.uint8)}, path)
    else:
        path.write_bytes(damage)
    loads = CountingLoads(source)
    with caplog.at_level(logging.WARNING, logger="dml.data.tensor_cache"):
        again = cached_images(source, "train", records, eval_params())
    assert loads.calls == len(records) and torch.equal(good, again)
    assert f"tensor cache {path}" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(cached_images(source, "train", records, eval_params()), good)


def test_no_temporary_file_is_left(omniglot_root: Path, tmp_path: Path):
    source = Omniglot(omniglot_root)
    cached_images(source, "train", source.splits()["train"], eval_params())
    assert not list((tmp_path / "cache" / "tensors").glob("*.tmp"))


# ---- bad images through the cache: the same one-line errors --------------------------------
def cached_datamodule(**kw) -> DMLDataModule:
    tf = build_transform(train=True, **{**OMNIGLOT_TF, **AFFINE})
    ev = build_transform(train=False, **OMNIGLOT_TF)
    return DMLDataModule(Omniglot(), tf, ev, batch_p=2, batch_k=2, val_holdout=1, cache=True, **kw)


def test_corrupt_image_is_one_line_naming_the_file_with_the_cache(omniglot_root: Path):
    name = rewrite_member(omniglot_root / "images_evaluation.zip", 2, b"\x89PNG broken")
    with pytest.raises(DatasetError) as info:
        cached_datamodule().setup("fit")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot read image ") and message.split()[3].endswith(name + ":")
    assert "(the file is corrupt or not an image; replace or remove it)" in message


def test_image_deleted_after_caching_is_one_line_naming_it(omniglot_root: Path):
    # a source whose list still names the file (as a CSV does): the fingerprint sees it gone,
    # the rebuild names it
    source = Omniglot(omniglot_root)
    records = source.splits()["test"]
    cached_images(source, "test", records, eval_params())
    victim = Path(records[1].item)
    victim.unlink()
    with pytest.raises(DatasetError) as info:
        cached_images(source, "test", records, eval_params())
    assert str(info.value) == f"image file not found: {victim}"


def test_cache_refuses_transforms_it_cannot_stand_in_for(omniglot_root: Path):
    ev = build_transform(train=False, **OMNIGLOT_TF)
    rrc = build_transform(train=True, random_resized_crop=True, **OMNIGLOT_TF)
    with pytest.raises(ConfigError, match=r"^data.cache=true cannot cache data.train_transform"):
        DMLDataModule(Omniglot(), rrc, ev, cache=True)
    with pytest.raises(ConfigError, match=r"^data.cache=true needs data.eval_transform built"):
        DMLDataModule(Omniglot(), ev, lambda img: img, cache=True)
    with pytest.raises(ConfigError, match=r"^data\.cache must be true or false"):
        DMLDataModule(Omniglot(), ev, ev, cache="yes")


def test_cached_eval_images_equal_the_pil_path_bit_for_bit(omniglot_root: Path):
    cached = cached_datamodule()
    cached.setup("fit")
    tf = build_transform(train=True, **{**OMNIGLOT_TF, **AFFINE})
    plain = DMLDataModule(
        Omniglot(), tf, build_transform(train=False, **OMNIGLOT_TF), 2, 2, val_holdout=1
    )
    plain.setup("fit")
    for split in ("val", "test"):
        a, b = cached.datasets[split], plain.datasets[split]
        assert len(a) == len(b)
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0]) and a[i][1:] == b[i][1:]


# ---- batched augmentation ------------------------------------------------------------------
def strokes(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """White images with dark strokes of varied grey, like Omniglot characters."""
    rng = np.random.default_rng(seed)
    out = np.full((n, 1, size, size), 255, np.uint8)
    for i in range(n):
        for _ in range(3):
            r, c = rng.integers(2, size - 8, 2)
            out[i, 0, r : r + rng.integers(2, 8), c : c + rng.integers(2, 8)] = rng.integers(0, 200)
    return torch.from_numpy(out)


def test_zero_magnitude_affine_is_the_identity_exactly():
    x = strokes(16).float()
    n = len(x)
    zeros = torch.zeros(n, dtype=torch.float64)
    out = affine_batch(x, zeros, zeros, zeros, torch.ones(n, dtype=torch.float64), 255)
    assert torch.equal(out, x)
    params = train_params(degrees=0, translate=0, scale=[1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(strokes(16), params, g), to_normalized(strokes(16), params))


def test_batched_affine_equals_torchvision_per_image():
    x = strokes(48)
    params = train_params()
    p = sample_affine(len(x), params, 28, 28, torch.Generator().manual_seed(3))
    ours = affine_batch(x.float(), p["angle"], p["tx"], p["ty"], p["scale"], 255)
    tensor_path, pil_path = [], []
    for i in range(len(x)):
        kw = dict(
            angle=float(p["angle"][i]),
            translate=[int(p["tx"][i]), int(p["ty"][i])],
            scale=float(p["scale"][i]),
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST,
        )
        tensor_path.append(TF.affine(x[i].float(), fill=[255.0], **kw))
        pil = TF.affine(Image.fromarray(x[i, 0].numpy()), fill=255, **kw)
        pil_path.append(torch.from_numpy(np.asarray(pil)).float()[None])
    assert torch.equal(ours, torch.stack(tensor_path))
    assert (ours == torch.stack(pil_path)).float().mean() >= 0.97
    assert not torch.equal(ours, x.float())  # the parameters did move the images


def test_sampled_parameters_follow_random_affine_distribution():
    params = train_params()
    n = 20_000
    ours = sample_affine(n, params, 28, 28, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = [
        RandomAffine.get_params([-10.0, 10.0], [0.1, 0.1], [0.9, 1.1], None, [28, 28])
        for _ in range(4_000)
    ]
    ref_angle = torch.tensor([r[0] for r in ref])
    ref_tx = torch.tensor([float(r[1][0]) for r in ref])
    ref_scale = torch.tensor([r[2] for r in ref])
    assert ours["angle"].abs().max() <= 10 and ours["angle"].abs().max() > 9.9
    assert (
        set(ours["tx"].unique().tolist())
        == set(ref_tx.unique().tolist())
        == {-3, -2, -1, 0, 1, 2, 3}
    )
    assert set(ours["ty"].unique().tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    assert ours["scale"].min() >= 0.9 and ours["scale"].max() <= 1.1
    for a, b, tol in ((ours["angle"], ref_angle, 0.25), (ours["tx"], ref_tx, 0.08)):
        assert abs(a.double().mean() - b.double().mean()) < tol
        assert abs(a.double().std() - b.double().std()) < tol
    assert abs(ours["scale"].mean() - ref_scale.mean()) < 0.003
    # each pixel shift's frequency as torchvision's (±3 are half as likely: rounding at 2.8)
    for v in range(-3, 4):
        assert abs((ours["tx"] == v).double().mean() - (ref_tx == v).double().mean()) < 0.025


def test_augmentation_is_seeded_by_seed_epoch_and_batch_indices():
    x, idx = strokes(8), torch.arange(8)
    params = train_params()

    def run(seed, epoch, indices):
        return augment_batch(x, params, batch_generator(seed, epoch, indices))

    assert torch.equal(run(0, 1, idx), run(0, 1, idx))
    assert not torch.equal(run(0, 1, idx), run(0, 2, idx))
    assert not torch.equal(run(0, 1, idx), run(1, 1, idx))
    assert not torch.equal(run(0, 1, idx), run(0, 1, idx.flip(0)))


def test_random_crop_and_flip_cover_their_ranges():
    params = train_params(resize=32, degrees=0, translate=0, scale=[1.0, 1.0], flip=True)
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(400, 1, 1, 1)
    x = (x % 251).to(torch.uint8)
    out = augment_batch(x, params, torch.Generator().manual_seed(0))
    assert out.shape == (400, 1, 28, 28)
    raw = (1 - (out * 0.3 + 0.1)) * 255  # undo normalisation and inversion
    corners = {round(float(v)) for v in raw[:, 0, 0, 0]}
    assert len(corners) > 20  # offsets vary over the 5×5 positions, both flips


def test_datamodule_hook_augments_only_uint8_training_batches(omniglot_root: Path):
    dm = cached_datamodule()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].dtype == torch.uint8
    out = dm.on_after_batch_transfer(batch, 0)
    assert out[0].dtype == torch.float32 and torch.equal(out[1], batch[1])
    assert torch.equal(out[0], dm.augment(batch, 0)[0])
    ev = next(iter(dm.val_dataloader()[0]))
    assert dm.on_after_batch_transfer(ev, 0) is ev


# ---- end to end ----------------------------------------------------------------------------
def test_same_seed_gives_identical_metrics_with_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        "data.cache=true",
        "+data.train_transform.degrees=10",
        "+data.train_transform.translate=0.1",
        "+data.train_transform.fill=255",
    ]
    a = train(tiny_config(tmp_path / "a", *overrides))
    b = train(tiny_config(tmp_path / "b", *overrides))
    assert cache_files(tmp_path)  # the run used the cache
    for key in ("val", "test"):
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True)
    wa = torch.load(Path(a["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    wb = torch.load(Path(b["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    for k, v in wa["state_dict"].items():
        assert torch.equal(v, wb["state_dict"][k]), k


def test_killed_run_with_the_cache_resumes_bit_identically(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["data.cache=true", "+data.train_transform.degrees=10"]
    train(tiny_config(tmp_path / "full", *overrides))
    crash = [
        "+callbacks.crash._target_=tests.test_training.StopAfter",
        "+callbacks.crash.epoch=1",
        "+callbacks.crash.batch=2",
    ]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(tmp_path / "resumed", *overrides, *crash))
    train(tiny_config(tmp_path / "resumed", *overrides, "ckpt_path=last"))
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == full["global_step"]
    for k, v in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], v), k


def test_images_of_two_shapes_are_one_line_naming_the_first_odd_one():
    from types import SimpleNamespace

    from dml.data.records import Record

    sizes = {"a.png": (20, 20), "b.png": (20, 20), "wide.png": (40, 20)}
    source = SimpleNamespace(load=lambda item: Image.new("L", sizes[item], 128))
    records = [Record(item, "c") for item in sizes]
    with pytest.raises(ConfigError, match=r"^wide.png is \(1, 28, 56\) after resizing.*"
                                          r"data.cache=false$") as error:
        decode_all(source, records, train_params())
    assert "\n" not in str(error.value)


def test_an_archive_changed_with_its_size_and_time_kept_refreshes_both_layers(
    omniglot_root: Path,
):
    """Two members' bytes swapped, size and modification time kept: the unpacked copy and the
    tensor cache share one fingerprint (:func:`dml.data.archive.archive_fingerprint`), so both
    are refreshed, never a new cache of the old images."""
    source = Omniglot(omniglot_root)
    records = source.splits()["test"]
    before = cached_images(source, "test", records, eval_params())
    archive = omniglot_root / "images_evaluation.zip"
    st = archive.stat()
    with zipfile.ZipFile(archive) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    first, last = 0, len(members) - 1  # two images of different classes
    contents = [c for _, c in members]
    contents[first], contents[last] = contents[last], contents[first]
    with zipfile.ZipFile(archive, "w") as z:
        for (name, _), content in zip(members, contents, strict=True):
            z.writestr(name, content)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert archive.stat().st_size == st.st_size and contents[first] != contents[last]
    source = Omniglot(omniglot_root)
    records = source.splits()["test"]
    after = cached_images(source, "test", records, eval_params())
    a, b = (next(i for i, r in enumerate(records) if r.item.endswith(members[k][0]))
            for k in (first, last))
    assert torch.equal(after[a], before[b]) and torch.equal(after[b], before[a])
    assert torch.equal(after, decode_all(Omniglot(omniglot_root), records, eval_params()))
