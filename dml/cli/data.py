"""``dml-data data=<name> [data.root=PATH] [overrides...]``: validate a dataset on disk (every
listed file must have an image header) and print a JSON summary (classes and images of every
split) before a long cluster job.

Composes the same Hydra configs as ``dml-train`` (so ``experiment=...`` and any ``data.*``
override apply) and lists the splits exactly as training will see them, including the validation
classes carved out of the training classes (``data.val_holdout``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dml.cli.errors import exit_on_user_error
from dml.cli.train import CONFIG_DIR

SPLIT_ORDER = ("train", "val", "test", "query", "gallery")
ROOT_ALIAS = ("data.root=", "data.source.root=")


def expand_aliases(overrides: list[str]) -> list[str]:
    """``data.root=PATH`` is short for ``data.source.root=PATH``."""
    short, full = ROOT_ALIAS
    return [full + o[len(short) :] if o.startswith(short) else o for o in overrides]


def dataset_summary(overrides: list[str]) -> dict[str, Any]:
    """Compose the config, build the DataModule's splits, and summarise them."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from dml.data.image_io import check_headers
    from dml.data.records import summarize

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=expand_aliases(overrides))
    datamodule = instantiate(cfg.data)
    splits = datamodule.split_records()
    check_headers(r for records in splits.values() for r in records)
    counts = summarize(splits)
    return {
        "source": f"{type(datamodule.source).__module__}.{type(datamodule.source).__name__}",
        "root": str(getattr(datamodule.source, "root", "")) or None,
        "splits": {s: counts[s] for s in sorted(counts, key=_split_rank)},
    }


def _split_rank(name: str) -> int:
    return SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER)


def main(argv: list[str] | None = None) -> None:
    from hydra.errors import HydraException

    parser = argparse.ArgumentParser(prog="dml-data", description=__doc__)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. data=cub200 data.root=/data/CUB"
    )
    args = parser.parse_args(argv)
    try:
        with exit_on_user_error():
            summary = dataset_summary(args.overrides)
    except HydraException as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
