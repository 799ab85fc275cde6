"""The ``_target_``\\ s a config from elsewhere may name: a checkpoint's stored config
(``dml.load_embedder``, ``dml-eval``), a resumed run's ``.hydra/overrides.yaml`` (``dml-train
resume=``) and a study's stored pruner. Such a config is data someone else wrote; instantiating it
must never call anything but dml's classes and the vetted library classes dml's configs use.

A target is trusted if it is one of :data:`TRUSTED_NAMES`, or if it names a class (not a function,
not a module) defined in one of :data:`TRUSTED_MODULES`. Every ``_target_`` in ``conf/`` passes
(a test checks it). Users extend the list for their own code with the environment variable
``DML_TRUSTED_TARGETS`` (comma-separated modules or names: ``mylab.losses,mylab.data.MyData``),
which a stored config cannot set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import Any

from omegaconf import OmegaConf

#: Modules whose classes a stored config may instantiate (with the arguments it gives).
TRUSTED_MODULES = (
    "dml.data",
    "dml.losses",
    "dml.miners",
    "dml.models",
    "dml.train.callbacks",
    "torch.optim",
    "torchvision.transforms",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "pytorch_metric_learning.losses",
    "pytorch_metric_learning.miners",
    "pytorch_metric_learning.distances",
    "pytorch_metric_learning.reducers",
    "optuna.samplers",
    "optuna.pruners",
    "hydra_plugins.dml_optuna_sweeper",
)
#: Functions and classes outside :data:`TRUSTED_MODULES` that dml's configs name.
TRUSTED_NAMES = frozenset({
    "dml.data.transforms.build_transform",
    "dml.train.optim.warmup_cosine",
    "dml.train.launch.job_ddp_strategy",
    "lightning.pytorch.Trainer",
})
USER_TRUSTED_VAR = "DML_TRUSTED_TARGETS"


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _locate(name: str, module: str) -> Any:
    """The object ``name`` names, importing only modules inside ``module``; None if none."""
    parts = name.split(".")
    for end in range(len(parts), len(module.split(".")) - 1, -1):
        try:
            obj = import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        except Exception:  # a module that fails to import names nothing usable
            return None
        for part in parts[end:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def is_trusted(target: object) -> bool:
    """True if a stored config may instantiate ``target`` (see the module docstring)."""
    if not isinstance(target, str):
        return False
    user = [m.strip() for m in os.environ.get(USER_TRUSTED_VAR, "").split(",") if m.strip()]
    if target in TRUSTED_NAMES or any(_under(target, m) for m in user):
        return True
    parts = target.split(".")
    if not all(p.isidentifier() and not p.startswith("_") for p in parts):
        return False  # no private names, no dunder tricks (X.__class__)
    module = next((m for m in TRUSTED_MODULES if _under(target, m)), None)
    if module is None:
        return False
    obj = _locate(target, module)
    # a class defined in the trusted module: not one merely imported there (zipfile.ZipFile)
    return isinstance(obj, type) and _under(getattr(obj, "__module__", ""), module)


def _key(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def untrusted_target(node: Any, path: str = "") -> tuple[str, str] | None:
    """The first ``(key path, target)`` in the plain containers ``node`` (nested dicts and
    lists, as ``OmegaConf.to_container`` makes them) whose ``_target_`` is not trusted, or whose
    value still holds an interpolation (``${...}``); None if all pass."""
    if isinstance(node, str) and "${" in node:
        return path, node
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(
        node, list) else ()
    for key, value in items:
        where = _key(path, key)
        if key == "_target_" and not is_trusted(value):
            return where, str(value)
        found = untrusted_target(value, where)
        if found is not None:
            return found
    return None



def trusted_config(
    config: Any,
    error: type[Exception],
    subject: str,
    *,
    refused: str = "",
    hint: str = "",
    parts: Sequence[str] | None = None,
) -> Any:
    """``config`` (an OmegaConf config or plain containers) resolved to plain containers, once
    every ``_target_`` in it, or in its dotted keys ``parts`` (the parts the caller instantiates;
    an absent one passes), is trusted. Otherwise one line as ``error``, beginning with
    ``subject`` (``"run.ckpt: its stored config"``): ``{subject} does not resolve (why){hint}``,
    ``{subject} holds an interpolation at KEY that does not resolve to a value{refused}`` or
    ``{subject} names KEY='TARGET', not a dml or vetted library class{refused} (your own code:
    add it to DML_TRUSTED_TARGETS)``."""
    if parts is not None and not parts:
        raise ValueError("parts=() would check nothing: pass the parts instantiated, or None")
    try:
        resolved = OmegaConf.to_container(
            config if OmegaConf.is_config(config) else OmegaConf.create(config), resolve=True)
    except Exception as e:  # OmegaConf raises many kinds on foreign data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise error(f"{subject} does not resolve ({first}){hint}") from None
    found = None
    for key in [""] if parts is None else parts:
        part = resolved
        for name in key.split(".") if key else ():
            part = part.get(name) if isinstance(part, Mapping) else None
        found = found or untrusted_target(part, key)
    if found is not None:
        key, target = found
        if "${" in target:
            raise error(f"{subject} holds an interpolation at {key} that does not resolve to a "
                        f"value{refused}")
        raise error(f"{subject} names {key}={target!r}, not a dml or vetted library class"
                    f"{refused} (your own code: add it to {USER_TRUSTED_VAR})")
    return resolved
