"""What made a run: the code (git commit and dirty flag of the checkout ``dml`` is imported from,
else the installed version), the versions of the libraries that compute it, the host and GPU.

Recorded in ``metrics.json`` (``provenance``) and in the W&B run's config; ``dml-report`` lists
the commits a table was made from (:func:`code_label`)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import dml

#: The folders of a checkout whose files make a run: the package, its configs, the sweeper.
CODE = ("dml", "conf", "hydra_plugins")
#: Where an install without its git repository may be told its commit (docker build --build-arg).
COMMIT_VARIABLE = "DML_COMMIT"
#: The libraries whose versions change what a run computes.
LIBRARIES = ("torch", "lightning", "timm", "optuna")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``{"dml": version, "commit": sha or None, "dirty": bool or None}``: the commit of the git
    checkout holding the imported ``dml`` package (an install without git: ``$DML_COMMIT`` if
    its builder set it, else None and only the version tells the code), dirty when a file under
    :data:`CODE` differs from it or is new there (not ignored): the outputs of runs and studies
    in the checkout do not count."""
    root = Path(dml.__file__).resolve().parent.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = dirty = None
    if top is not None and Path(top).resolve() == root:  # not a venv inside some repository
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--", *CODE)
        dirty = None if status is None else bool(status)
    else:  # an install without its repository, e.g. the Docker image (docker/Dockerfile)
        commit = os.environ.get(COMMIT_VARIABLE) or None
    return {"dml": dml.__version__, "commit": commit, "dirty": dirty}


def gpu_name() -> str | None:
    """The name of the first visible CUDA device, None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cuda_version() -> str | None:
    """The CUDA version torch was built with, None for a CPU build."""
    import torch

    return torch.version.cuda


def provenance() -> dict[str, Any]:
    """The code, library versions, host and GPU of this process (see the module docstring)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {**code_version(), "python": platform.python_version(), **versions,
            "cuda": cuda_version(), "host": socket.gethostname(), "gpu": gpu_name()}


def code_label(record: dict[str, Any] | None) -> str | None:
    """A run's code in a word: ``<commit, 12 digits>``, ``+dirty`` appended for a dirty
    checkout, ``dml <version>`` for an install without git; None without a record."""
    if not record:
        return None
    if record.get("commit"):
        return record["commit"][:12] + ("+dirty" if record.get("dirty") else "")
    return f"dml {record.get('dml')}"


if __name__ == "__main__":  # python -m dml.provenance: what a run started now would record
    print(json.dumps(provenance(), indent=2))
