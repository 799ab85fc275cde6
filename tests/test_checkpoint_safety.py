"""Checkpoints are loaded with weights_only: no code runs, and damaged, foreign or non-finite
files give one line naming the file, through both dml.load_embedder and dml-eval."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dml
from dml.cli.eval import main as dml_eval
from dml.errors import CheckpointError
from dml.train.checkpointing import first_non_finite
from dml.train.run import train

from .training_utils import tiny_config


class Payload:
    """Pickles to a call of os.system: loading it with plain pickle creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    return Path(train(tiny_config(run_dir))["checkpoint"])


def eval_error(capsys, path: Path) -> str:
    """The one stderr line of a dml-eval that must refuse ``path`` with exit code 2."""
    with pytest.raises(SystemExit) as info:
        dml_eval([str(path), "--accelerator", "cpu"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def malicious(checkpoint, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with a pickled payload added, and the marker file the payload creates."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["payload"] = Payload(marker)
    torch.save(ckpt, tmp_path / "malicious.ckpt")
    return tmp_path / "malicious.ckpt", marker


def test_pickled_code_does_not_run_through_load_embedder(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="is not a safe dml checkpoint") as info:
        dml.load_embedder(path, device="cpu")
    assert str(path) in str(info.value) and "posix.system" in str(info.value)
    assert not marker.exists()


def test_pickled_code_does_not_run_through_dml_eval(malicious, capsys):
    path, marker = malicious
    assert eval_error(capsys, path).startswith(f"error: {path} is not a safe dml checkpoint")
    assert not marker.exists()


def write_truncated(path: Path, real: Path) -> None:
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 2])


FOREIGN = {
    "truncated": (write_truncated, "is truncated or not a checkpoint"),
    "list": (lambda p, _: torch.save([1, 2, 3], p), "is not a dml checkpoint"),
    "text": (lambda p, _: p.write_text("hello\n"), "is truncated or not a checkpoint"),
    # 'c' is pickle's GLOBAL opcode: not "could run arbitrary code", just not a checkpoint
    "text read as a pickle global": (lambda p, _: p.write_text("collections\nOrderedDict\n"),
                                     "is truncated or not a checkpoint"),
    "empty": (lambda p, _: p.write_bytes(b""), "is truncated or not a checkpoint"),
    "directory": (lambda p, _: p.mkdir(), "is a directory, not a checkpoint"),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_damaged_or_foreign_files_are_one_line_errors(kind, checkpoint, tmp_path, capsys):
    write, message = FOREIGN[kind]
    path = tmp_path / f"{kind}.ckpt"
    write(path, checkpoint)
    with pytest.raises(CheckpointError, match=message):
        dml.load_embedder(path, device="cpu")
    assert eval_error(capsys, path).startswith(f"error: {path} {message}")


def test_non_finite_buffer_is_refused(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("inf"))
    path = tmp_path / "inf.ckpt"
    torch.save(ckpt, path)
    line = eval_error(capsys, path)
    assert line.startswith(f"error: {path}: tensor {key} has NaN or inf values")
    with pytest.raises(CheckpointError, match=f"tensor {key} has NaN or inf"):
        dml.load_embedder(path, device="cpu")


def brute_force_first_non_finite(named):
    for name, t in named:
        floating = torch.is_tensor(t) and t.is_floating_point()
        if floating and any(not math.isfinite(v) for v in t.double().flatten().tolist()):
            return name
    return None


@pytest.mark.parametrize("seed", range(20))
def test_first_non_finite_matches_an_entrywise_check(seed):
    g = torch.Generator().manual_seed(seed)
    named = []
    for i in range(6):
        dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][i % 4]
        t = torch.randn(int(torch.randint(1, 50, (1,), generator=g)), generator=g).to(dtype)
        if torch.rand(1, generator=g) < 0.15:
            t[int(torch.randint(len(t), (1,), generator=g))] = [math.nan, math.inf, -math.inf][
                int(torch.randint(3, (1,), generator=g))
            ]
        named.append((f"t{i}", t))
    named.append(("counter", torch.tensor(7)))  # integer buffers are never non-finite
    assert first_non_finite(named) == brute_force_first_non_finite(named)


def test_first_non_finite_cases():
    big16 = torch.full((100_000,), 60_000.0, dtype=torch.float16)  # sum overflows in float16
    assert first_non_finite([("big", big16)]) is None
    both = [("a", torch.tensor([math.inf, -math.inf])), ("b", torch.tensor([math.nan]))]
    assert first_non_finite(both) == "a"  # inf + -inf: a NaN sum, still found
    assert first_non_finite([]) is None and first_non_finite([("x", [1.0])]) is None


def stored_config_attacks(marker: Path, tmp_path: Path) -> dict[str, tuple[dict, str, str]]:
    """Changes to a checkpoint's stored config, each of which would create ``marker`` if it were
    instantiated: ``name -> (changes to merge into dml_config, key path, target)``."""
    pickled = tmp_path / "payload.pt"
    torch.save(Payload(marker), pickled)
    source = tmp_path / "source.txt"
    source.write_text("copied\n")
    copy = {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}
    return {
        "torch.load": ({"data": {"eval_transform": {
            "_target_": "torch.load", "f": str(pickled), "weights_only": False}}},
            "data.eval_transform._target_", "torch.load"),
        "shutil": ({"data": {"eval_transform": copy}},
                   "data.eval_transform._target_", "shutil.copyfile"),
        "exec": ({"model": {"_target_": "builtins.exec",
                            "_args_": [f"open({str(marker)!r}, 'w').close()"]}},
                 "model._target_", "builtins.exec"),
        "os.system": ({"model": {"_target_": "os.system", "command": f"touch {marker}"}},
                      "model._target_", "os.system"),
        "nested in a list": ({"data": {"eval_transform": {
            "_target_": "torchvision.transforms.Compose", "transforms": [copy]}}},
            "data.eval_transform.transforms[0]._target_", "shutil.copyfile"),
        "nested in a dict": ({"model": {"backbone": copy}}, "model.backbone._target_",
                             "shutil.copyfile"),
        "partial": ({"data": {"eval_transform": {**copy, "_partial_": True}}},
                    "data.eval_transform._target_", "shutil.copyfile"),
        "interpolation": ({"evil": "shutil.copyfile", "data": {"eval_transform": {
            **copy, "_target_": "${evil}"}}}, "data.eval_transform._target_", "shutil.copyfile"),
    }


ATTACKS = ["torch.load", "shutil", "exec", "os.system", "nested in a list", "nested in a dict",
           "partial", "interpolation"]


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "_target_" not in value:
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_stored_config_naming_untrusted_code_runs_nothing(attack, checkpoint, tmp_path,
                                                            capsys):
    marker = tmp_path / "pwned"
    changes, key, target = stored_config_attacks(marker, tmp_path)[attack]
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["dml_config"] = merged(ckpt["dml_config"], changes)
    path = tmp_path / "attack.ckpt"
    torch.save(ckpt, path)
    message = f"{path}: its stored config names {key}={target!r}, not a dml or vetted library"
    with pytest.raises(CheckpointError) as info:
        dml.load_embedder(path, device="cpu")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert eval_error(capsys, path).startswith(f"error: {message}")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["loss", "callbacks", "data"])
def test_untrusted_code_outside_the_embedder_is_refused_by_dml_eval(where, checkpoint, tmp_path,
                                                                    capsys):
    """load_embedder checks only what it builds (``model``, ``data.eval_transform``) and never
    builds the rest; dml-eval builds the whole run, so it checks every part of the config."""
    marker = tmp_path / "pwned"
    source = tmp_path / "source.txt"
    source.write_text("copied\n")
    copy = {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}
    changes, key = {
        "loss": ({"loss": copy}, "loss._target_"),
        "callbacks": ({"callbacks": {"evil": copy}}, "callbacks.evil._target_"),
        "data": ({"data": {"evil": copy}}, "data.evil._target_"),
    }[where]
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["dml_config"] = merged(ckpt["dml_config"], changes)
    path = tmp_path / "attack.ckpt"
    torch.save(ckpt, path)
    message = f"{path}: its stored config names {key}='shutil.copyfile', not a dml or vetted"
    assert eval_error(capsys, path).startswith(f"error: {message}")
    assert dml.load_embedder(path, device="cpu")([]).shape == (0, 16)
    assert not marker.exists()


def test_every_target_in_the_configs_is_trusted():
    """A config added to conf/ that names a target outside the allow-list would make its runs'
    checkpoints unloadable: it fails here first."""
    import yaml

    from dml.trusted_targets import is_trusted

    def targets(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from [value] if key == "_target_" else targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    repo = Path(__file__).resolve().parents[1]
    found = {target for path in (repo / "conf").rglob("*.yaml")
             for target in targets(yaml.safe_load(path.read_text())) if target != "???"}
    assert len(found) > 40 and {t for t in found if not is_trusted(t)} == set()


def test_a_checkpoint_naming_moved_code_still_loads(checkpoint, tmp_path, capsys):
    """A checkpoint saved before code moved (its config names the old ``_target_`` paths of
    :data:`dml.moved_targets.MOVED_TARGETS`) still evaluates in dml-eval and load_embedder."""
    from hydra.utils import get_object

    from dml.moved_targets import MOVED_TARGETS

    ckpt = torch.load(checkpoint, weights_only=True)
    text = json.dumps(ckpt["dml_config"])
    for old, new in MOVED_TARGETS.items():
        text = text.replace(json.dumps(new), json.dumps(old))
    assert '"dml.optim.warmup_cosine"' in text  # the default scheduler, as an old run saved it
    ckpt["dml_config"] = json.loads(text)
    ckpt["dml_config"]["memory"] = {"_target_": "dml.losses.memory.CrossBatchMemory",
                                    "_partial_": True, "size": 64}
    torch.save(ckpt, tmp_path / "old.ckpt")
    dml_eval([str(tmp_path / "old.ckpt"), "--accelerator", "cpu"])
    out = capsys.readouterr().out
    assert "recall@1" in json.loads(out[out.index("{"):])
    assert dml.load_embedder(tmp_path / "old.ckpt", device="cpu")([]).shape == (0, 16)
    for new in MOVED_TARGETS.values():
        get_object(new)


def test_using_a_trained_model_does_not_import_lightning():
    code = "import sys, dml.inference; assert 'lightning' not in sys.modules, 'imports lightning'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_checking_no_part_of_a_config_is_refused():
    from dml.trusted_targets import trusted_config

    with pytest.raises(ValueError, match="would check nothing"):
        trusted_config({"model": {"_target_": "os.system"}}, CheckpointError, "x", parts=())
