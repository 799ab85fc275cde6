"""Run records: the runs of a sweep or study, found and read from their directories (never from
W&B), and a strategy's name. The report (:mod:`dml.report`) presents them; the tuner names its
runs with them.

A job directory, as ``dml-train`` (``dml.train.run.train``) and Hydra write it, holds
``metrics.json`` (the selected checkpoint's metrics), ``config.yaml`` (the resolved config) and
``.hydra/hydra.yaml`` (``hydra.runtime.choices``: which config of each group ran) and
``.hydra/overrides.yaml`` (the command-line overrides of that job).

A study directory (``dml-train -m search=<loss>``, holding a ``study.json``) contributes its
retrain runs only, as the strategy's ``tuned`` and ``untuned`` rows; its trials are searches on
validation classes, never rows of a table.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dml.errors import UserError
from dml.provenance import code_label

#: Entries of the metrics dict that are counts, not metrics.
NON_METRICS = frozenset({"num_queries"})
#: Config groups that wrap the loss (a cross-batch memory, synthetic negatives): part of the row.
WRAPPER_GROUPS = ("memory", "synthesis")
#: Overrides that never split a cell: averaged over (seed) or already its row and column.
CELL_KEYS = frozenset({"seed", "loss", "data", *WRAPPER_GROUPS})
#: Overrides that say where or how a run ran, not what it computed.
BOOKKEEPING = frozenset({"ckpt_path", "run_dir", "resume"})
#: How to get past a damaged run file.
FIX = "repair it, or move that job's directory out of the sweep and re-run the job"
#: The strategy or dataset of a run whose files do not name it.
UNKNOWN = "unknown"
#: A study's retrain settings (``study.json`` ``runs``) as the report names them.
TUNING = {"best": "tuned", "defaults": "untuned"}


@dataclass(frozen=True)
class Run:
    """One finished job: its strategy (the loss config name), dataset (the data config name),
    seed, command-line overrides and final metrics of the chosen split; the configs of the
    groups wrapping its loss (``memory``, ``synthesis``), ``tuned``/``untuned`` for a study's
    retrain run, the directory given to the report that holds it, and the code that made it
    (:func:`dml.provenance.code_label`; None for a run that recorded none)."""

    run_dir: Path
    strategy: str
    dataset: str
    seed: int | None
    overrides: tuple[str, ...]
    metrics: dict[str, float]
    wall_time_s: float | None = None
    wrappers: tuple[str, ...] = ()
    tuning: str | None = None
    source: Path | None = None
    code: str | None = None

    @property
    def name(self) -> str:
        """The strategy with its wrappers: ``multisimilarity+xbm``, ``sct+mochi``."""
        return strategy_name(self.strategy, self.wrappers)

    def settings(self) -> dict[str, str]:
        """The overrides that may distinguish runs: ``{key: value}`` without the cell's own keys
        (seed, loss, data), bookkeeping and ``hydra.*``; ``+``/``++``/``~`` prefixes dropped."""
        out = {}
        for override in self.overrides:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if key in CELL_KEYS or key in BOOKKEEPING or key.startswith("hydra"):
                continue
            out[key] = value
        return out


class RunFileError(UserError, ValueError):
    """A file of a run directory (``metrics.json``, ``config.yaml``, ``.hydra/*.yaml``) is
    unreadable or malformed; the message names it."""


def read_run_file(path: Path, expected: type = dict) -> Any:
    """The JSON (``.json``) or YAML content of a run's file, None if there is no such file;
    a :class:`RunFileError` naming it if it cannot be parsed or is not an ``expected``."""
    if not path.is_file():
        return None
    parse = json.loads if path.suffix == ".json" else yaml.safe_load
    try:
        data = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise RunFileError(f"{path} is unreadable ({_reason(e)}): {FIX}") from e
    if data is not None and not isinstance(data, expected):
        raise RunFileError(
            f"{path} holds a {type(data).__name__}, not a {expected.__name__}: {FIX}"
        )
    return data


def _reason(e: Exception) -> str:
    """One line on why a file did not parse (YAML errors span several lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem} at line {e.problem_mark.line + 1}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_overrides(path: Path) -> tuple[str, ...]:
    """The command-line overrides a job saved (``.hydra/overrides.yaml``): a list of strings."""
    overrides = read_run_file(path, list) or []
    if not all(isinstance(o, str) for o in overrides):
        raise RunFileError(f"{path} is not a list of key=value overrides: {FIX}")
    return tuple(overrides)


def _from_overrides(overrides: Sequence[str], key: str) -> str | None:
    for o in overrides:
        k, _, v = o.partition("=")
        if k.lstrip("+") == key:
            return v
    return None


def chosen_wrappers(choices: dict[str, Any], overrides: Sequence[str] = ()) -> tuple[str, ...]:
    """The configs chosen for the ``WRAPPER_GROUPS`` (Hydra's runtime choices, else the
    overrides), unset ones left out: ``("xbm",)``."""
    chosen = (choices.get(g, _from_overrides(overrides, g)) for g in WRAPPER_GROUPS)
    return tuple(w for w in chosen if w not in (None, "null", "None"))


def strategy_name(loss: str, wrappers: Iterable[str]) -> str:
    """A loss config's name joined with those of the configs wrapping it:
    ``multisimilarity+xbm``, ``sct+mochi``."""
    return "+".join((loss, *wrappers))


def load_run(job_dir: Path, split: str = "test", strategy: str = UNKNOWN) -> Run:
    """The :class:`Run` of a job directory that has a ``metrics.json``; a :class:`RunFileError`
    naming the file if one of its files is damaged. ``strategy``: the name when neither the
    Hydra choices nor the overrides give the loss."""
    result = read_run_file(job_dir / "metrics.json") or {}
    overrides = _read_overrides(job_dir / ".hydra" / "overrides.yaml")
    hydra_cfg = read_run_file(job_dir / ".hydra" / "hydra.yaml") or {}
    choices = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {})
    config = read_run_file(job_dir / "config.yaml") or {}
    seed = config.get("seed", _from_overrides(overrides, "seed"))
    metrics = {
        k: float(v)
        for k, v in (result.get(split) or {}).items()
        if k not in NON_METRICS and isinstance(v, (int, float))
    }
    return Run(
        run_dir=job_dir,
        strategy=choices.get("loss") or _from_overrides(overrides, "loss") or strategy,
        dataset=choices.get("data") or _from_overrides(overrides, "data") or UNKNOWN,
        seed=None if seed is None else int(seed),
        overrides=overrides,
        metrics=metrics,
        wall_time_s=result.get("wall_time_s"),
        wrappers=chosen_wrappers(choices, overrides),
        code=code_label(result.get("provenance")),
    )


def selected_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run selected (``metrics.json``'s ``checkpoint``: ``best.ckpt``,
    or ``last.ckpt`` without validation), looked up in the run's own ``checkpoints/`` (the
    directory may have moved since); a :class:`RunFileError` if there is none."""
    selected = (read_run_file(run_dir / "metrics.json") or {}).get("checkpoint")
    path = run_dir / "checkpoints" / Path(selected).name if selected else None
    if path is None or not path.is_file():
        missing = f"{path} is missing" if path else "its metrics.json names none"
        raise RunFileError(f"{run_dir} has no selected checkpoint to draw from ({missing})")
    return path


def job_dirs(root: Path) -> list[Path]:
    """Every job directory under ``root`` (``root`` itself for a single run): those with a
    ``.hydra`` folder or a ``metrics.json``, in natural order (2 before 10)."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob("metrics.json")}
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_studies(root: str | Path) -> list[Path]:
    """Study directories (holding ``study.json``) at or under ``root``."""
    return sorted(p.parent for p in Path(root).rglob("study.json"))


def study_jobs(study_dir: Path) -> list[tuple[Path, str, str]]:
    """``(job directory, "tuned" | "untuned", strategy)`` of each retrain run a study lists; a
    run that is both (the defaults won the search) is listed under each."""
    summary = read_run_file(study_dir / "study.json") or {}
    strategy = summary.get("strategy") or study_dir.name
    return [(study_dir / name, TUNING.get(setting, setting), strategy)
            for setting, names in (summary.get("runs") or {}).items() for name in names]


def collect_runs(root: str | Path, split: str = "test") -> tuple[list[Run], list[Path]]:
    """``(runs, incomplete)``: the finished runs under a sweep directory, and the job
    directories without ``metrics.json`` or without metrics of ``split`` (crashed, killed or
    still running). Of a study under ``root``, only its retrain runs (see the module's doc).
    A damaged file of a finished run is a :class:`RunFileError`, never a silently dropped run."""
    root = Path(root)
    studies = find_studies(root)
    jobs: list[tuple[Path, str | None, str]] = [
        (job, None, UNKNOWN) for job in job_dirs(root)
        if not any(s == job or s in job.parents for s in studies)
    ]
    jobs += [job for study in studies for job in study_jobs(study)]
    runs, incomplete = [], []
    for job, tuning, strategy in jobs:
        run = load_run(job, split, strategy) if (job / "metrics.json").is_file() else None
        if run is None or not run.metrics:
            incomplete.append(job)
        else:
            runs.append(replace(run, tuning=tuning, source=root))
    return runs, incomplete


def join_runs(
    collected: Iterable[tuple[Sequence[Run], Sequence[Path]]],
) -> tuple[list[Run], list[Path]]:
    """The ``(runs, incomplete)`` of several :func:`collect_runs` joined into one: a run found
    under two of the directories (nested or repeated) is counted once, from the first."""
    runs: list[Run] = []
    incomplete: list[Path] = []
    seen: set[tuple[Path, str | None]] = set()
    for found, unfinished in collected:
        for run in found:
            key = (run.run_dir.resolve(), run.tuning)
            if key not in seen:
                seen.add(key)
                runs.append(run)
        incomplete += [p for p in unfinished if p not in incomplete]
    return runs, incomplete


def latest_sweep(base: str | Path = "multirun") -> Path:
    """The most recent sweep under ``base`` (Hydra's ``multirun/<date>/<time>``): the newest
    folder holding a ``multirun.yaml``."""
    sweeps = [p.parent for p in Path(base).glob("**/multirun.yaml")]
    if not sweeps:
        raise FileNotFoundError(f"no sweep (multirun.yaml) under {Path(base).resolve()}")
    return max(sweeps, key=lambda p: (p / "multirun.yaml").stat().st_mtime)


def sweep_command(sweep_dir: Path) -> str | None:
    """The ``dml-train -m ...`` command of a sweep, from Hydra's ``multirun.yaml`` (None for a
    directory that is not a sweep)."""
    saved = read_run_file(sweep_dir / "multirun.yaml") or {}
    task = saved.get("hydra", {}).get("overrides", {}).get("task")
    return None if task is None else " ".join(["dml-train -m", *map(shlex.quote, task)])


def sweep_wall_time(sweep_dir: Path, runs: Sequence[Run]) -> float | None:
    """Seconds from the sweep's start (Hydra writes ``multirun.yaml`` then) to its last
    ``metrics.json``; None without ``multirun.yaml``."""
    start = sweep_dir / "multirun.yaml"
    if not start.is_file() or not runs:
        return None
    end = max((r.run_dir / "metrics.json").stat().st_mtime for r in runs)
    return max(0.0, end - start.stat().st_mtime)
