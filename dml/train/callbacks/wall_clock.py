"""A run's wall time across resumes, kept in its checkpoints."""

from __future__ import annotations

import time
import uuid
from typing import Any

from lightning.pytorch import Callback


class WallClock(Callback):
    """Seconds a run has taken: this process's, since ``start``, plus those of the processes
    before it up to the checkpoint it resumed from (saved in every checkpoint as this callback's
    state). Time between a killed process's last checkpoint and its end is not counted: that
    work was lost and is redone. A checkpoint this process wrote (reloaded for the final
    evaluation) adds nothing: its time is already this process's."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.before = 0.0  # seconds of earlier processes, from the resume checkpoint
        self.process = uuid.uuid4().hex  # tells this process's checkpoints from earlier ones

    def elapsed(self) -> float:
        return self.before + time.time() - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "process": self.process}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("process") != self.process:  # an earlier process's time
            self.before = float(state_dict["elapsed_s"])
