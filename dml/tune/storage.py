"""Where a study lives: an Optuna journal file (default, ``<sweep dir>/optuna.journal``) or an
SQLite/RDB URL. Both survive the process, so an interrupted study resumes where it stopped, and
several processes (parallel sweeps, SLURM jobs) can share one study."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from dml.errors import ConfigError
from dml.trusted_targets import untrusted_target

PRUNER_ATTR = "pruner"  # the study's pruner config, stored with the study for its trials
OP_CODES = set(range(11))  # optuna.storages.journal's JournalOperation values (a test checks)
FIX = "delete it to start a new study, or point hydra.sweeper.storage at the study's own file"


def check_journal(path: Path) -> None:
    """An existing journal file holds Optuna journal records, one JSON object per line (Optuna's
    own reader skips what it cannot parse, so a damaged file would read as an empty study)."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"study storage {path} is a directory, not a journal file: {FIX}")
    data = path.read_bytes()
    if not data:
        raise ConfigError(f"study storage {path} is empty (a journal always holds records): {FIX}")
    complete = data.split(b"\n")[:-1]  # a last line without newline is a write in progress
    for number, line in enumerate(complete, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("op_code") not in OP_CODES:
            raise ConfigError(f"study storage {path} is corrupt (line {number} is not an Optuna "
                              f"journal record): {FIX}")


def repair_journal(path: Path) -> None:
    """Cut off a last line without newline, with a warning: Optuna appends whole lines under its
    lock, so under that lock such a line is a write that was interrupted (a killed process, a
    full disk, a truncated copy). Left there, the next record would be appended onto it and
    make the journal unreadable."""
    if not path.is_file() or path.read_bytes().endswith(b"\n") or not path.stat().st_size:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return  # completed by another process meanwhile
        with open(path, "r+b") as f:
            f.truncate(keep)
    finally:
        lock.release()
    warnings.warn(f"study storage {path}: its last line was an incomplete record (a write was "
                  f"interrupted); removed its {len(data) - keep} bytes", stacklevel=2)


def open_storage(storage: str) -> BaseStorage:
    """``storage``: a journal file path, or an RDB URL (``sqlite:///study.db``, ``postgresql://``).
    A damaged file is a one-line :class:`ConfigError` naming it."""
    if "://" not in storage:
        path = Path(storage)
        check_journal(path)
        repair_journal(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise ConfigError(f"study storage {path} cannot be written ({type(e).__name__}): "
                              "point hydra.sweeper.storage (or hydra.sweep.dir) at a writable "
                              "folder") from None
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///"):])
        if path.exists() and path.stat().st_size == 0:
            raise ConfigError(f"study storage {path} is empty (not an SQLite database): {FIX}")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(storage)
    except Exception as e:  # SQLAlchemy: not a database, unreadable schema, no driver
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"study storage {storage} cannot be opened ({first}): {FIX}") from None


def load_study(storage: str, study_name: str) -> optuna.Study:
    """An existing study (a trial process reporting to its sweeper's study), with the pruner its
    sweeper stored as the study's ``PRUNER_ATTR`` user attribute (Optuna stores no pruner)."""
    from hydra.utils import instantiate

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
        config = study.user_attrs.get(PRUNER_ATTR)
        if config and (found := untrusted_target(config, "pruner")) is not None:
            raise ConfigError(f"study {study_name!r} in {storage} stores {found[0]}="
                              f"{found[1]!r}, not a vetted pruner class: it was not loaded")
        if config:
            study.pruner = instantiate(config)
        return study
    except KeyError:
        raise ConfigError(
            f"study {study_name!r} not found in {storage}: trial.* is set by the optuna sweeper, "
            "not by hand"
        ) from None
