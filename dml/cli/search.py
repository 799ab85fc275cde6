"""``dml-search INDEX_DIR IMAGE... -k 10``: the k nearest items of each query image in a
``dml-index`` folder, as JSON (per query: rank, score, path, label). See
:mod:`dml.deploy.search`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dml.cli.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="dml-search", description=__doc__)
    p.add_argument("index", help="a dml-index output folder")
    p.add_argument("images", nargs="+", help="query image files")
    p.add_argument("-k", type=int, default=10, help="neighbours per query")
    p.add_argument("--checkpoint", help="embed queries with this checkpoint (default: the "
                   "index's)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    with exit_on_user_error():
        from dml.deploy.search import Searcher

        hits = Searcher(args.index, args.checkpoint, args.device).search(args.images, args.k)
    out = [{"query": q, "neighbours": [dataclasses.asdict(h) for h in row]}
           for q, row in zip(args.images, hits, strict=True)]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
