"""``dml-eval CHECKPOINT``: retrieval metrics of a trained model on a dataset split.

The run's config comes from the checkpoint. Overrides change it: ``data=<name>`` switches to
another dataset config of ``conf/data`` (as in ``dml-train``), dotted ones set single values, e.g.
``data.source.root=/data/omniglot``. The model always stays the checkpoint's.

``--show N`` draws N queries of the split (the worst by precision@k and random ones) with their
top-``--show-k`` neighbours, correct ones framed green and wrong ones red, into ``--show-path``
(a PNG; its table of query and neighbour indices as JSON beside it).

``--one-shot N`` (Omniglot with ``data.source.merge_characters=1``) adds the one-shot N-way
within-alphabet classification accuracy of Lake et al. (2015) on the split, ``one_shot@N``, and
its number of trials, ``one_shot_trials``: ``--episodes`` seeded episodes (``--seed``), each
classifying N images of one drawer against one image per character of another drawer (a seeded
re-sampling of Lake's protocol, not its 20 fixed runs; see :mod:`dml.eval.oneshot`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from dml.cli.errors import exit_on_user_error
from dml.cli.train import CONFIG_DIR
from dml.config_checks import check_int
from dml.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from torch import Tensor

    from dml.data import DMLDataModule

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
        "--one-shot",
        type=int,
        metavar="N",
        help="also the one-shot N-way within-alphabet accuracy (Omniglot), e.g. 20",
    )
    p.add_argument(
        "--episodes", type=int, help="one-shot episodes (default 1000: N*1000 trials)"
    )
    p.add_argument("--seed", type=int, help="seed of the one-shot episodes (default 0)")
    p.add_argument(
        "--show",
        type=int,
        metavar="N",
        help="also draw N queries (the worst by precision@k, and random ones) with their "
        "top-k as a PNG grid, and its table as JSON",
    )
    p.add_argument("--show-k", type=int, default=5, help="neighbours per query in the grid")
    p.add_argument(
        "--show-path", type=Path, default=Path("retrieval_grid.png"), help="the grid's PNG file"
    )
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


MAX_EPISODES = 100_000


def check_one_shot(args: argparse.Namespace) -> None:
    """``--one-shot``, ``--episodes`` and ``--seed`` are sensible (before anything is loaded);
    the latter two default to 1000 and 0, and are an error without ``--one-shot``."""
    if args.one_shot is None:
        given = [flag for flag in ("episodes", "seed") if getattr(args, flag) is not None]
        if given:
            raise ConfigError(
                f"--{given[0]} sets the one-shot episodes and does nothing alone: add "
                "--one-shot N (e.g. --one-shot 20)"
            )
        return
    check_int("--one-shot", args.one_shot, 2, "the classes per episode", 20)
    args.episodes = 1000 if args.episodes is None else args.episodes
    args.seed = 0 if args.seed is None else args.seed
    check_int("--episodes", args.episodes, 1, "the one-shot episodes", 1000)
    if args.episodes > MAX_EPISODES:
        raise ConfigError(f"--episodes must be <= {MAX_EPISODES:,} (the episodes are held in "
                          f"memory; 1000 already estimate the accuracy to ~0.3 %), got "
                          f"{args.episodes:,}")


def check_show(args: argparse.Namespace) -> None:
    """``--show N`` and ``--show-k`` are positive and ``--show-path`` writable (before loading)."""
    if args.show is None:
        return
    check_int("--show", args.show, 1, "the queries drawn", 8)
    check_int("--show-k", args.show_k, 1, "the neighbours drawn per query", 5)
    check_output(args.show_path)


def one_shot_episodes(
    datamodule: DMLDataModule, split: str, n_way: int, episodes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The ``(support, query)`` episodes of :func:`dml.eval.oneshot.sample_episodes`, as indices
    of the ``split`` dataset's records (the order its eval loader reads and the module returns
    the embeddings in). A :class:`DatasetError` unless its source tells each record's drawer."""
    from dml.eval.oneshot import sample_episodes

    records = datamodule.datasets[split].records
    drawer = getattr(datamodule.source, "drawer", None)
    drawers = [drawer(r) for r in records] if drawer is not None else [None]
    if None in drawers:
        why = "has no drawers" if drawer is None else "has merged or rotated classes"
        raise DatasetError(
            f"--one-shot needs Omniglot with data.source.merge_characters=1 (each class one "
            f"character drawn once by each drawer): the {split} split of "
            f"{type(datamodule.source).__name__} {why}"
        )
    labels, groups = [r.label for r in records], [r.group for r in records]
    return sample_episodes(labels, groups, drawers, n_way, episodes, seed)


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate

    from dml.inference import load_checkpoint, net_from_checkpoint
    from dml.train.run import build_module

    ckpt, cfg = load_checkpoint(args.checkpoint)
    cfg = apply_overrides(cfg, args.overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    loaders = datamodule.eval_dataloader(args.split)
    episodes = None
    if args.one_shot is not None:  # before the model: a dataset without drawers fails at once
        episodes = one_shot_episodes(datamodule, args.split, args.one_shot, args.episodes,
                                     args.seed)
    module = build_module(cfg)
    module.net = net_from_checkpoint(ckpt, cfg)
    module.keep_eval_embeddings = episodes is not None or args.show is not None
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False
    )
    trainer.test(module, dataloaders=loaders, verbose=False)
    metrics = dict(module.eval_metrics["test"])
    if episodes is not None:
        from dml.eval.oneshot import one_shot_accuracy

        [(embeddings, _labels)] = module.eval_embeddings["test"]
        assert len(embeddings) == len(datamodule.datasets[args.split])  # one per record, in order
        metrics[f"one_shot@{args.one_shot}"] = one_shot_accuracy(embeddings, *episodes)
        metrics["one_shot_trials"] = episodes[0].numel()
    if args.show is not None:
        from dml.eval.retrieval_grid import write_retrieval_grid

        write_retrieval_grid(datamodule, args.split, module.eval_embeddings["test"],
                             args.show_path, args.show, args.show_k)
        print(f"retrieval grid: {args.show_path}", file=sys.stderr)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_user_error():
        check_one_shot(args)
        check_show(args)
        if args.output:
            check_output(args.output)
        metrics = evaluate(args)
    text = json.dumps({"checkpoint": args.checkpoint, "split": args.split, **metrics}, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
