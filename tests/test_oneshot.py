"""Omniglot's one-shot N-way within-alphabet check: the accuracy against an explicit loop, the
episode sampler against the protocol, and ``dml-eval --one-shot`` end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import dml
from dml.cli.eval import main as dml_eval
from dml.data.omniglot import Omniglot
from dml.errors import DatasetError
from dml.eval.oneshot import one_shot_accuracy, sample_episodes
from dml.train.run import build_module

from .training_utils import REPO


def table(chars: dict[str, int], drawers: int = 4, missing=()) -> tuple[list, list, list]:
    """``(labels, groups, drawers)`` of a fake Omniglot: ``chars[group]`` characters per group,
    each drawn by drawers ``01..drawers`` except the ``(label, drawer)`` pairs in ``missing``;
    items listed drawer-major (so item order is not class order)."""
    rows = [
        (f"{g}/c{c}", g, f"{d:02d}")
        for d in range(1, drawers + 1)
        for g, n in chars.items()
        for c in range(n)
        if (f"{g}/c{c}", f"{d:02d}") not in missing
    ]
    labels, groups, who = (list(col) for col in zip(*rows, strict=True))
    return labels, groups, who


def reference_accuracy(z: torch.Tensor, labels: list, support, query) -> float:
    """The protocol as an explicit loop: each query takes the label of the first support image of
    highest cosine similarity (python floats)."""
    rows = z.tolist()

    def cos(a: list, b: list) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    correct = 0
    for s_row, q_row in zip(support.tolist(), query.tolist(), strict=True):
        for q in q_row:
            best, best_sim = None, -math.inf
            for s in s_row:
                sim = cos(rows[q], rows[s])
                if sim > best_sim:
                    best, best_sim = s, sim
            correct += labels[best] == labels[q]
    return correct / support.numel()


# ---- accuracy ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("palette", "dim"), [(None, 8), (3, 8), (4, 64)])
def test_accuracy_matches_an_explicit_loop(palette, dim):
    """Random embeddings; with a ``palette`` every embedding is one of that many vectors, so most
    support sets hold exact ties (across classes) and the tie-break decides many queries (at
    20-way a batched matmul would score equal support vectors unequally)."""
    labels, groups, drawers = table({"A": 22, "B": 20}, drawers=5)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(len(labels), dim, generator=g)
    if palette:
        z = z[torch.randint(palette, (len(labels),), generator=g)]
    support, query = sample_episodes(labels, groups, drawers, 20, 60, seed=3)
    expected = reference_accuracy(z, labels, support, query)
    assert one_shot_accuracy(z, support, query) == pytest.approx(expected, abs=1e-12)
    if palette:
        assert 0.02 < expected < 0.5  # ties decide: the lower index, not always the right one


def test_ties_go_to_the_lower_support_index():
    a, c = [1.0, 0.0], [0.0, 1.0]
    z = torch.tensor([a, a, c, a, c, c])  # support: a, a, c; queries: a, c, c
    support, query = torch.tensor([[0, 1, 2]]), torch.tensor([[3, 4, 5]])
    # query 0 ties supports 0 and 1: the first, its own (right); query 1 is c: support 2 (wrong)
    assert one_shot_accuracy(z, support, query) == pytest.approx(2 / 3)


def test_scale_does_not_matter_cosine():
    labels, groups, drawers = table({"A": 6}, drawers=3)
    z = torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(0))
    scale = torch.rand(len(labels), 1, generator=torch.Generator().manual_seed(1)) * 100 + 0.01
    support, query = sample_episodes(labels, groups, drawers, 5, 50, seed=0)
    assert one_shot_accuracy(z * scale, support, query) == one_shot_accuracy(z, support, query)


# ---- sampler -----------------------------------------------------------------------------------
def test_episodes_obey_the_protocol():
    # group B misses drawer 04 for c1: its pairs with 04 have only 2 common characters
    missing = {("B/c1", "04")}
    labels, groups, drawers = table({"A": 6, "B": 3, "C": 2}, drawers=4, missing=missing)
    support, query = sample_episodes(labels, groups, drawers, 3, 400, seed=0)
    assert support.shape == query.shape == (400, 3)
    seen_groups, seen_pairs = set(), set()
    for s_row, q_row in zip(support.tolist(), query.tolist(), strict=True):
        group = {groups[i] for i in s_row + q_row}
        assert len(group) == 1  # one alphabet
        assert [labels[i] for i in s_row] == [labels[i] for i in q_row]  # column j: one class
        assert len({labels[i] for i in s_row}) == 3  # N distinct characters
        d1, d2 = {drawers[i] for i in s_row}, {drawers[i] for i in q_row}
        assert len(d1) == len(d2) == 1 and d1 != d2  # one drawer each, two drawers
        seen_groups |= group
        seen_pairs.add((*group, *d1, *d2))
    assert seen_groups == {"A", "B"}  # C has 2 < 3 characters: never used
    assert ("B", "04", "01") not in seen_pairs and ("B", "01", "02") in seen_pairs
    assert len({p[1:] for p in seen_pairs if p[0] == "A"}) == 12  # all ordered pairs of 4


class Rehashed(str):
    """A str hashed differently, as in a process with another PYTHONHASHSEED: sets and dicts of
    them iterate in another order."""

    def __hash__(self) -> int:
        return hash(("another salt", str(self)))


def test_episodes_depend_on_the_seed_only():
    labels, groups, drawers = table({"Z": 6, "B": 4, "M": 5, "D": 3})
    rng_state, torch_state = random.getstate(), torch.get_rng_state()
    first = sample_episodes(labels, groups, drawers, 3, 50, seed=7)
    assert random.getstate() == rng_state and torch.equal(torch.get_rng_state(), torch_state)
    again = sample_episodes(labels, groups, drawers, 3, 50, seed=7)
    other = sample_episodes(labels, groups, drawers, 3, 50, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    # the same items in another order, or hashed differently: the same (class, drawer) episodes
    keys = list(zip(labels, drawers, strict=True))
    order = list(range(len(labels)))
    random.Random(0).shuffle(order)
    shuffled = [[col[i] for i in order] for col in (labels, groups, drawers)]
    rehashed = [[Rehashed(x) for x in col] for col in (labels, groups, drawers)]

    def named(columns: list[list[str]], item_keys: list) -> list:
        support, query = sample_episodes(*columns, 3, 50, seed=7)
        return [[item_keys[i] for i in row] for row in [*support.tolist(), *query.tolist()]]

    expected = named([labels, groups, drawers], keys)
    assert named(shuffled, [keys[i] for i in order]) == expected
    assert named(rehashed, keys) == expected


def test_no_group_with_n_characters_is_an_error():
    labels, groups, drawers = table({"A": 3, "B": 2})
    with pytest.raises(DatasetError, match="has at most 3: choose a smaller N"):
        sample_episodes(labels, groups, drawers, 4, 10)


def test_characters_without_two_common_drawers_do_not_count():
    # 3 characters, but each drawer drew a different two of them
    missing = {("A/c0", "01"), ("A/c1", "02"), ("A/c2", "03")}
    labels, groups, drawers = table({"A": 3}, drawers=3, missing=missing)
    with pytest.raises(DatasetError, match="at most 1"):
        sample_episodes(labels, groups, drawers, 2, 10)


def test_drawer_comes_from_the_file_name():
    record = dml.data.Record(
        "/x/images_evaluation/Tengwar/character07/0977_13.png", "Tengwar/character07", "Tengwar"
    )
    assert Omniglot.drawer(record) == "13"
    assert Omniglot.drawer(dml.data.Record((record.item, 1), "T/c@90", "Tengwar")) is None
    assert Omniglot.drawer(dml.data.Record(record.item, "a+b", None)) is None


# ---- dml-eval --one-shot -----------------------------------------------------------------------
@pytest.fixture
def checkpoint(omniglot_root: Path, tmp_path: Path) -> Path:
    """An (untrained) conv4 checkpoint of the default Omniglot config, written as dml-train does."""
    overrides = [f"run_dir={tmp_path}", "logger=csv", "model.embedding_dim=8", "module.nmi=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    module = build_module(cfg)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path = tmp_path / "best.ckpt"
    torch.save(ckpt, path)
    return path


def test_dml_eval_one_shot_matches_the_protocol_on_the_test_images(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = [str(checkpoint), "--one-shot", "2", "--episodes", "300", "--seed", "5"]
    dml_eval([*argv, "--accelerator", "cpu", "--output", str(out)])
    metrics = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("\n{") :]) == metrics  # after the module's summary
    assert metrics["one_shot_trials"] == 600 and metrics["num_queries"] == 16
    # the same episodes on embeddings computed here, image by image, in record order
    records = Omniglot().splits()["test"]
    embed = dml.load_embedder(checkpoint, device="cpu")
    z = embed([Omniglot().load(r.item) for r in records])
    labels = [r.label for r in records]
    drawers = [Omniglot.drawer(r) for r in records]
    support, query = sample_episodes(labels, [r.group for r in records], drawers, 2, 300, seed=5)
    expected = reference_accuracy(z, labels, support, query)
    assert metrics["one_shot@2"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1


def eval_error(capsys, argv: list[str]) -> str:
    """The one stderr line of a dml-eval that must fail with exit code 2."""
    with pytest.raises(SystemExit) as info:
        dml_eval([*argv, "--accelerator", "cpu"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


NEEDS = "error: --one-shot needs Omniglot with data.source.merge_characters=1"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["data.source.merge_characters=2"], "the test split of Omniglot has merged or rotated"),
        (
            ["--split", "train", "data.source.train_rotations=4", "data.cache=false"],
            "the train split of Omniglot has merged or rotated",
        ),
        (
            ["data=synthetic", "data.train_transform.size=28"],
            "the test split of Synthetic has no drawers",
        ),
    ],
    ids=["merged", "rotated", "synthetic"],
)
def test_one_shot_without_drawers_is_one_line(checkpoint, capsys, overrides, why):
    line = eval_error(capsys, [str(checkpoint), "--one-shot", "2", *overrides])
    assert line.startswith(NEEDS) and why in line


def test_one_shot_bigger_than_the_alphabets_is_one_line(checkpoint, capsys):
    line = eval_error(capsys, [str(checkpoint), "--one-shot", "3"])
    assert line.startswith("error: one-shot 3-way needs a group (alphabet) with 3 classes")


def test_one_shot_of_one_class_is_one_line(checkpoint, capsys):
    line = eval_error(capsys, [str(checkpoint), "--one-shot", "1"])
    assert line.startswith("error: --one-shot must be an integer >= 2")


def test_a_billion_episodes_is_one_line(checkpoint, capsys):
    line = eval_error(capsys, [str(checkpoint), "--one-shot", "2", "--episodes", "1000000000"])
    assert line == ("error: --episodes must be <= 100,000 (the episodes are held in memory; 1000 "
                    "already estimate the accuracy to ~0.3 %), got 1,000,000,000")


@pytest.mark.parametrize("flag", ["--episodes", "--seed"])
def test_one_shot_settings_without_one_shot_are_one_line(checkpoint, capsys, flag):
    line = eval_error(capsys, [str(checkpoint), flag, "300"])
    assert line == (
        f"error: {flag} sets the one-shot episodes and does nothing alone: add --one-shot N "
        "(e.g. --one-shot 20)"
    )


def test_one_shot_defaults_to_1000_episodes(checkpoint, tmp_path):
    out = tmp_path / "m.json"
    dml_eval([str(checkpoint), "--one-shot", "2", "--accelerator", "cpu", "--output", str(out)])
    assert json.loads(out.read_text())["one_shot_trials"] == 2 * 1000
