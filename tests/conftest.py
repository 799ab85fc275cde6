"""Shared fixtures: tiny on-disk datasets in the official layouts; the installed wheel."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_png(path: Path, seed: int, size: int = 20, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) > 0.5).astype(np.uint8) * 255
    img = Image.fromarray(arr, mode="L")
    img.convert(mode).save(path)


@pytest.fixture
def omniglot_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A miniature Omniglot: background 4 alphabets × 3 characters, evaluation 2 × 2; 4 drawers."""
    root = tmp_path / "data" / "omniglot"
    root.mkdir(parents=True)
    layout = {"images_background": (4, 3), "images_evaluation": (2, 2)}
    seed = 0
    for stem, (n_alpha, n_char) in layout.items():
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as z:
            for a in range(n_alpha):
                for c in range(n_char):
                    for d in range(4):
                        png = tmp_path / "png" / f"{seed}.png"
                        write_png(png, seed)
                        seed += 1
                        z.write(
                            png,
                            f"{stem}/Alpha{a}_{stem[7:10]}/character{c + 1:02d}/"
                            f"{c:04d}_{d + 1:02d}.png",
                        )
    monkeypatch.setenv("DML_DATA_DIR", str(root.parent))
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    return root


def real_data_dir() -> Path | None:
    """``$DML_DATA_DIR`` when it holds the real Omniglot zips (CI sets it), else None."""
    base = os.environ.get("DML_DATA_DIR")
    if base and (Path(base) / "omniglot" / "images_evaluation.zip").is_file():
        return Path(base)
    return None


# ---- the local SLURM cluster and PostgreSQL server (.ci/cluster.sh) ----
def slurm_missing() -> str | None:
    """Why the tests marked ``slurm`` cannot run here (None: they can): SLURM's node must be up
    and PostgreSQL reachable at ``$DML_POSTGRES_URL``."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=20).stdout.split()
    except subprocess.TimeoutExpired:
        return "SLURM does not answer (sinfo timed out)"
    if not {"idle", "mixed", "allocated"} & set(states):
        return f"no SLURM node is up (sinfo: {' '.join(states) or 'nothing'})"
    try:
        import psycopg

        psycopg.connect(postgres_url().replace("+psycopg", ""), connect_timeout=5).close()
    except Exception as e:  # no driver, no server, refused login
        return f"PostgreSQL at {postgres_url()} not usable ({type(e).__name__})"
    return None


def postgres_url() -> str:
    return os.environ.get("DML_POSTGRES_URL",
                          "postgresql+psycopg://dml:dml@127.0.0.1:5432/dml")


_SLURM_MISSING: list[str | None] = []


@pytest.fixture(autouse=True)
def _slurm_cluster(request: pytest.FixtureRequest) -> None:
    """Tests marked ``slurm`` skip with a one-line reason where the cluster is not running, and
    fail where it must be (``DML_SLURM=1``, set by ``make test`` as root and by CI)."""
    if request.node.get_closest_marker("slurm") is None:
        return
    if not _SLURM_MISSING:
        _SLURM_MISSING.append(slurm_missing())
    reason = _SLURM_MISSING[0]
    if reason is None:
        return
    if os.environ.get("DML_SLURM") == "1":
        pytest.fail(f"DML_SLURM=1 but {reason}: .ci/cluster.sh start did not work", pytrace=False)
    pytest.skip(f"{reason}; as root: .ci/cluster.sh start")


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """The wheel of exactly the files docker/Dockerfile copies (what the image installs),
    installed with pip into a folder of its own (building in the checkout would leave build/
    there); run code from it with ``training_utils.run_installed``."""
    from .dockerfile import build_context
    from .training_utils import install_wheel

    base = tmp_path_factory.mktemp("install")
    return install_wheel(build_context(base / "src"), base)
