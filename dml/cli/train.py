"""``dml-train``: train one experiment (or a sweep with ``-m``) from the Hydra configs in conf/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

# The package's configs: in a checkout dml/conf links to the top-level conf/; a wheel holds a copy.
# `--config-dir DIR` adds a user's own config folder (new groups, or files that override ours).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


# The run directory ``resume=`` read overrides from (set by :func:`main`), else None.
_resumed_from: Path | None = None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from dml.cli.errors import exit_on_user_error
    from dml.train.run import train

    if cfg.get("trial"):  # a study's trial: its sweeper reads the outcome, errors included
        return train(cfg)
    with exit_on_user_error():
        if _resumed_from is not None:
            check_resumed_targets(cfg, _resumed_from)
        return train(cfg)


def check_resumed_targets(cfg: DictConfig, run_dir: Path) -> None:
    """A config composed from another run directory's overrides names only trusted targets
    (:mod:`dml.trusted_targets`): checked before anything is instantiated."""
    from dml.errors import RunDirError
    from dml.trusted_targets import trusted_config

    trusted_config(cfg, RunDirError, f"cannot resume {run_dir}: with its .hydra/overrides.yaml "
                   "the config")


def override_key(override: str) -> str:
    """The config key an override sets: ``+a.b=1`` → ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def null_groups(argv: list[str]) -> list[str]:
    """``group=null`` (e.g. ``memory=null``: no memory) → ``~group``, Hydra's spelling: it
    refuses null as a config group's value."""
    return [f"~{a[:-len('=null')]}" if a.endswith("=null")
            and (Path(CONFIG_DIR) / a[:-len("=null")]).is_dir() else a for a in argv]


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run_dir>`` → that run's own overrides (those not given again, nor inside a
    group the new ones delete: ``~memory`` drops a saved ``memory.size=...``) + the new ones +
    its directory + ``ckpt_path=last``."""
    rest = [a for a in argv if not a.startswith("resume=")]
    if len(rest) == len(argv):
        return argv
    run_dir = Path(next(a for a in argv if a.startswith("resume="))[len("resume=") :])
    given = {override_key(o) for o in rest} | {"ckpt_path", "resume_changes"}  # never inherited
    dropped = tuple(f"{override_key(o)}." for o in rest if o.startswith("~"))
    saved = [o for o in saved_overrides(run_dir)
             if override_key(o) not in given and not override_key(o).startswith(dropped)]
    return [*user_config_dirs(run_dir), *saved, *rest, f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def saved_overrides(run_dir: Path) -> list[str]:
    """The overrides ``run_dir``'s run was started with (its ``.hydra/overrides.yaml``), which
    ``dml-train`` wrote: a list of strings, no ``hydra.*`` setting (Hydra keeps those apart, and
    they could make Hydra itself instantiate anything), and no ``trial.*`` (a tuner's trial
    belongs to its study: rerun the study). Anything else is a :class:`RunDirError`."""
    from dml.errors import RunDirError

    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise RunDirError(f"cannot resume {run_dir}: {overrides_file} not found (is it a "
                          "dml-train run directory?)")
    try:
        saved = yaml.safe_load(overrides_file.read_text()) or []
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise RunDirError(f"cannot resume {run_dir}: {overrides_file} cannot be read "
                          f"({type(e).__name__})") from None
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise RunDirError(f"cannot resume {run_dir}: {overrides_file} is not a list of overrides")
    for override in saved:
        root = override_key(override).replace("/", ".").split(".")[0]
        if root == "hydra":
            raise RunDirError(f"cannot resume {run_dir}: {overrides_file} sets {override!r}; "
                              "a dml-train run records no hydra.* override")
        if root == "trial":
            raise RunDirError(
                f"cannot resume {run_dir}: it is a trial of the study in {run_dir.parent} and "
                "belongs to it; rerun the study's command to continue its trials"
            )
    return saved


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
    from dml.cli.errors import exit_on_user_error
    from dml.runs.run_dir import register_resolvers

    global _resumed_from
    register_resolvers()  # before Hydra composes the config that names them
    with exit_on_user_error():
        argv = resume_argv(null_groups(sys.argv[1:]))
    if any(a.startswith("resume=") for a in sys.argv[1:]):
        _resumed_from = Path(next(a for a in sys.argv if a.startswith("resume="))[len("resume="):])
    sys.argv = [sys.argv[0], *argv]
    _hydra_main()


if __name__ == "__main__":
    main()
