"""``dml-train``: train one experiment (or a sweep with ``-m``) from the Hydra configs in conf/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

import dml.slurm  # noqa: F401  (the ${dml.slurm_gpus:...} resolver of hydra/launcher=slurm)

# The package's configs: in a checkout dml/conf links to the top-level conf/; a wheel holds a copy.
# `--config-dir DIR` adds a user's own config folder (new groups, or files that override ours).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from dml.cli.errors import exit_on_user_error
    from dml.train.run import train

    if cfg.get("trial"):  # a study's trial: its sweeper reads the outcome, errors included
        return train(cfg)
    with exit_on_user_error():
        return train(cfg)


def override_key(override: str) -> str:
    """The config key an override sets: ``+a.b=1`` → ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run_dir>`` → that run's own overrides (those not given again) + the new ones +
    its directory + ``ckpt_path=last``."""
    rest = [a for a in argv if not a.startswith("resume=")]
    if len(rest) == len(argv):
        return argv
    run_dir = Path(next(a for a in argv if a.startswith("resume="))[len("resume=") :])
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        sys.exit(f"dml-train: cannot resume: {overrides_file} not found (is {run_dir} a run dir?)")
    given = {override_key(o) for o in rest} | {"ckpt_path"}
    saved = [
        o for o in yaml.safe_load(overrides_file.read_text()) or [] if override_key(o) not in given
    ]
    return [*user_config_dirs(run_dir), *saved, *rest, f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def user_config_dirs(run_dir: Path) -> list[str]:
    """``--config-dir=DIR`` of the run's own config folder, if it was given one (read from its
    ``.hydra/hydra.yaml``), so that its configs are found again."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return []
    runtime = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {})
    return [
        f"--config-dir={source['path']}"
        for source in runtime.get("config_sources") or []
        if source.get("provider") == "command-line" and source.get("schema") == "file"
    ]


def main() -> None:
    from dml.runs.run_dir import register_resolvers

    register_resolvers()  # before Hydra composes the config that names them
    sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
