"""Read what an offline W&B run wrote: its ``.wandb`` file, a LevelDB-format log of protobuf
records (32 KiB blocks, 7-byte record headers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """One ``wandb/offline-run-*`` folder: its ``run`` record and its config."""

    folder: Path
    run: Any  # wandb_internal_pb2.RunRecord
    config: dict[str, Any]


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run written in ``run_dir``, oldest first."""
    found = []
    for folder in sorted(run_dir.glob("wandb/offline-run-*")):
        (path,) = folder.glob("run-*.wandb")
        run, config = None, {}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run" and run is None:
                run = record.run
            elif kind == "config":
                config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        assert run is not None, f"no run record in {path}"
        found.append(OfflineRun(folder, run, config))
    return found


def wandb_run_record(run_dir: Path) -> Any:
    """The ``run`` record of the one offline W&B run in ``run_dir``."""
    (only,) = offline_runs(run_dir)
    return only.run
