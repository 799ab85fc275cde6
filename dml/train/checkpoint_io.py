"""Lightning's checkpoint I/O made atomic and safe (see :mod:`dml.train.checkpointing`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from dml.files import write_atomic
from dml.train.checkpointing import load_checkpoint_file


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, saving atomically and loading with :func:`load_checkpoint_file`
    (resume, and the validation / test of the selected checkpoint)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        write_atomic(
            Path(path),
            lambda tmp: TorchCheckpointIO.save_checkpoint(self, checkpoint, tmp, storage_options),
        )

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path)
