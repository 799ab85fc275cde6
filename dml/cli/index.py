"""``dml-index EMBED_DIR --kind flat|ivf|hnsw --out DIR``: a faiss index of ``dml-embed``'s
embeddings, saved with its items; approximate kinds print their recall@k against exact search.
See :mod:`dml.deploy.index`."""

from __future__ import annotations

import argparse
import json
import sys

from dml.cli.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="dml-index", description=__doc__)
    p.add_argument("embeddings", help="a dml-embed output folder")
    p.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--nlist", type=int, default=1024, help="ivf: k-means cells")
    p.add_argument("--nprobe", type=int, default=16, help="ivf: cells searched")
    p.add_argument("--m", type=int, default=32, help="hnsw: links per node")
    p.add_argument("--ef-construction", type=int, default=200, help="hnsw: build beam")
    p.add_argument("--ef-search", type=int, default=128, help="hnsw: search beam")
    p.add_argument("--recall-k", type=int, default=10, help="k of the printed recall@k")
    p.add_argument("--recall-queries", type=int, default=1000, help="queries of that recall")
    args = p.parse_args(argv)
    with exit_on_user_error():
        from dml.deploy.index import build_index

        info = build_index(args.embeddings, args.kind, args.out, args.nlist, args.nprobe, args.m,
                           args.ef_construction, args.ef_search, args.recall_k,
                           args.recall_queries)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
