"""``dml-export CHECKPOINT --format torchscript|onnx|safetensors --out DIR``: the trained embedder
(backbone, head, L2 normalisation) as a file that runs without dml, and ``preprocessing.json``
describing the images it expects (see :mod:`dml.deploy.export`)."""

from __future__ import annotations

import argparse
import sys

from dml.cli.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    from dml.deploy.export import MODEL_FILES, export

    p = argparse.ArgumentParser(prog="dml-export", description=__doc__)
    p.add_argument("checkpoint", help="a .ckpt written by dml-train")
    p.add_argument("--format", required=True, choices=list(MODEL_FILES))
    p.add_argument("--out", required=True, help="output folder (created)")
    args = p.parse_args(argv)
    with exit_on_user_error():
        for path in export(args.checkpoint, args.format, args.out):
            print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
