"""``dml-eval CHECKPOINT``: retrieval metrics of a trained model on a dataset split.

The run's config comes from the checkpoint. Overrides change it: ``data=<name>`` switches to
another dataset config of ``conf/data`` (as in ``dml-train``), dotted ones set single values, e.g.
``data.source.root=/data/omniglot``. The model always stays the checkpoint's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dml.cli.errors import exit_on_user_error
from dml.cli.train import CONFIG_DIR
from dml.errors import ConfigError

#: Config groups dml-eval cannot switch, and why.
FIXED_GROUPS = {
    "model": "the model is the checkpoint's (its weights define it)",
    "experiment": "an experiment sets up training; override data=<name> and data.* instead",
    "hydra": "Hydra settings do not apply to dml-eval",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dml-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="a .ckpt written by dml-train")
    p.add_argument("--split", default="test", help="test (default), val, or query (query→gallery)")
    p.add_argument("--output", type=Path, help="also write the metrics as JSON to this file")
    p.add_argument("--accelerator", default="auto")
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides, e.g. data=cub200 data.source.root=/data/CUB",
    )
    return p.parse_intermixed_args(argv)


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with the group overrides (``data=cub200``) composed from ``conf/`` replacing their
    group, then the dotted ones merged (``+key=value`` as ``key=value``). Interpolations of a
    composed group (``${seed}``) resolve against ``cfg``."""
    groups, dotted = {}, []
    for override in overrides:
        key, _, name = override.partition("=")
        if key and "." not in key and (Path(CONFIG_DIR) / key).is_dir():
            groups[key] = _check_group_option(key, name)
        else:
            dotted.append(override.lstrip("+"))  # merge adds keys: no need for dml-train's +
    cfg = copy.deepcopy(cfg)
    if groups:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            composed = compose("config", overrides=[f"{g}={n}" for g, n in groups.items()])
        for group in groups:
            cfg[group] = composed[group]
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotted))
    OmegaConf.resolve(cfg)
    return cfg


def _check_group_option(group: str, name: str) -> str:
    """``name`` if ``conf/<group>/<name>.yaml`` exists and dml-eval may switch ``group``."""
    if group in FIXED_GROUPS:
        raise ConfigError(f"dml-eval cannot override {group}=: {FIXED_GROUPS[group]}")
    available = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    if name not in available:
        raise ConfigError(
            f"no {group} config '{name}' in {CONFIG_DIR}/{group}; available: {', '.join(available)}"
        )
    return name


def check_output(path: Path) -> None:
    """Create the parent folders of ``--output`` and check it can be written, before the long
    evaluation; a file created for the check is removed again."""
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write --output {path} ({e}): pass a writable file path") from e
    if not existed:
        path.unlink()


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate

    from dml.inference import load_checkpoint, net_from_checkpoint
    from dml.training import build_module

    ckpt, cfg = load_checkpoint(args.checkpoint)
    cfg = apply_overrides(cfg, args.overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    module = build_module(cfg)
    module.net = net_from_checkpoint(ckpt, cfg)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False
    )
    trainer.test(module, dataloaders=datamodule.eval_dataloader(args.split), verbose=False)
    return module.eval_metrics["test"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_user_error():
        if args.output:
            check_output(args.output)
        metrics = evaluate(args)
    text = json.dumps({"checkpoint": args.checkpoint, "split": args.split, **metrics}, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
