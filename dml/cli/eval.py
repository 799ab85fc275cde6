"""``dml-eval CHECKPOINT``: retrieval metrics of a trained model on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dml.cli.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dml-eval", description=__doc__)
    p.add_argument("checkpoint", help="a .ckpt written by dml-train")
    p.add_argument("--split", default="test", help="test (default), val, or query (query→gallery)")
    p.add_argument("--output", type=Path, help="also write the metrics as JSON to this file")
    p.add_argument("--accelerator", default="auto")
    p.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. data.source.root=/data/omniglot"
    )
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dml.inference import load_checkpoint, net_from_checkpoint
    from dml.training import build_module

    ckpt, cfg = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
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
        metrics = evaluate(args)
    text = json.dumps({"checkpoint": args.checkpoint, "split": args.split, **metrics}, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
