"""``dml-embed CHECKPOINT (--images DIR | --csv FILE | data=<name> --split S) --out DIR``: the
embeddings of a collection of images as ``embeddings.npy`` (float32 or float16), with
``items.csv`` (index, path, label) and ``embed.json``; streamed in chunks, resumable (run the
same command again), a progress bar on a terminal. See :mod:`dml.deploy.embed`."""

from __future__ import annotations

import argparse
import sys

from dml.cli.errors import exit_on_user_error
from dml.errors import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dml-embed", description=__doc__)
    p.add_argument("checkpoint", help="a .ckpt written by dml-train")
    p.add_argument("--images", help="a folder of images (labels: their first sub-folder)")
    p.add_argument("--csv", help="a CSV with a path column and optionally a label column")
    p.add_argument("--split", help="the split of the dataset named by data=<name>")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--chunk-size", type=int, default=4096, help="rows per resumable chunk")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("overrides", nargs="*", help="data=<name> and data.* overrides")
    return p.parse_intermixed_args(argv)


def collection(args: argparse.Namespace):
    from dml.deploy import collection as c

    given = [flag for flag in ("images", "csv") if getattr(args, flag)]
    if args.overrides:
        given.append("data=")
    if len(given) != 1:
        raise ConfigError("give exactly one of --images DIR, --csv FILE, data=<name> --split S")
    if args.images:
        return c.from_folder(args.images)
    if args.csv:
        return c.from_csv(args.csv)
    if not args.split:
        raise ConfigError("data=<name> needs --split (e.g. --split test)")
    return c.from_data_config(args.overrides, args.split)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_user_error():
        from dml.deploy.embed import embed_collection

        out = embed_collection(args.checkpoint, collection(args), args.out, args.dtype,
                               args.chunk_size, args.batch_size, args.workers, args.device)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
