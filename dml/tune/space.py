"""Search spaces: ``conf/search/<loss>.yaml`` → Optuna distributions → Hydra overrides.

A space maps a config key to a range, written as in the configs::

    optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # float (log scale)
    loss.k:       {low: 1, high: 8, type: int}              # integer
    loss.hard_threshold: {choices: [null, 0.7, 0.8]}        # categorical
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from dml.errors import ConfigError

FLOAT_KEYS = {"low", "high", "log", "step", "type"}


def distribution(key: str, spec: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one search-space entry (a :class:`ConfigError` names ``key``)."""
    where = f"hydra.sweeper.params.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be {{low, high[, log, step, type]}} or {{choices}}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not list(spec["choices"]):
            raise ConfigError(f"{where}: a categorical range is {{choices: [a, b, ...]}}")
        return optuna.distributions.CategoricalDistribution(list(spec["choices"]))
    kind = spec.get("type", "float")
    if not {"low", "high"} <= set(spec) <= FLOAT_KEYS or kind not in ("float", "int"):
        raise ConfigError(
            f"{where}: a range is {{low, high}} with optional log, step, type (float or int); "
            f"got {dict(spec)}"
        )
    low, high = spec["low"], spec["high"]
    try:
        if kind == "int":
            return optuna.distributions.IntDistribution(
                int(low), int(high), log=bool(spec.get("log", False)), step=int(spec.get("step", 1))
            )
        return optuna.distributions.FloatDistribution(
            float(low), float(high), log=bool(spec.get("log", False)), step=spec.get("step")
        )
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


RANGE_KEYS = FLOAT_KEYS | {"choices"}


def flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Search-space keys as dotted paths: the files write ``loss.lam: {...}``; the command line
    (``+hydra.sweeper.params.loss.lam={low: 2, high: 4}``) nests them. A later entry wins."""
    result: dict[str, Any] = {}
    for key, spec in params.items():
        path = f"{prefix}{key}"
        if isinstance(spec, Mapping) and spec and not set(spec) & RANGE_KEYS:
            result.update(flat(spec, f"{path}."))
        else:
            result.pop(path, None)
            result[path] = spec
    return result


def distributions(params: Mapping[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every entry of a search space (``hydra.sweeper.params``), in its order."""
    if not params:
        raise ConfigError(
            "hydra.sweeper.params is empty: choose a search space (search=<loss>, one of "
            "conf/search/) or give ranges as hydra.sweeper.params"
        )
    return {key: distribution(key, spec) for key, spec in params.items()}


def range_text(dist: optuna.distributions.BaseDistribution) -> str:
    """A distribution written as a search-space entry (``{low: 0.0001, high: 0.05, log: true}``)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return "{choices: [" + ", ".join(override_value(c) for c in dist.choices) + "]}"
    if isinstance(dist, (optuna.distributions.FloatDistribution,
                         optuna.distributions.IntDistribution)):
        kind = ", type: int" if isinstance(dist, optuna.distributions.IntDistribution) else ""
        step = "" if dist.step is None else f", step: {dist.step}"
        return f"{{low: {dist.low}, high: {dist.high}, log: {str(dist.log).lower()}{step}{kind}}}"
    return repr(dist)


def check_stored_space(space: Mapping[str, optuna.distributions.BaseDistribution],
                       trials: list[optuna.trial.FrozenTrial], study: str) -> None:
    """Each value of ``space`` keeps the kind, log scale and choices it had in the study's
    ``trials`` (Optuna cannot mix them in one study); a change is a one-line
    :class:`ConfigError` naming the value, before any trial is asked for."""
    for trial in trials:
        for key, old in trial.distributions.items():
            if key not in space:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, space[key])
            except ValueError:
                raise ConfigError(
                    f"hydra.sweeper.params.{key} is now {range_text(space[key])} but study "
                    f"{study} drew trial {trial.number} from {range_text(old)}: keep its "
                    "log, type and choices (low and high may change) or start a new study "
                    "(another hydra.sweep.dir)"
                ) from None


def check_space(params: Mapping[str, Any], cfg: DictConfig) -> None:
    """Every key of the space names a value of the composed config (e.g. ``loss.lam`` needs a loss
    that has ``lam``); a typo or a space for another loss is a one-line :class:`ConfigError`."""
    for key in params:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            parent = key.split(".", 1)[0]
            target = OmegaConf.select(cfg, f"{parent}._target_", default=None)
            has = f" ({parent} is {target})" if target else ""
            raise ConfigError(
                f"the search space names {key}, which this config does not have{has}: use the "
                f"search space of the chosen {parent} (search=<name> sets both) or fix the key"
            )


def override_value(value: Any) -> str:
    """A value written in Hydra's override grammar (floats exactly, ``null`` for None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("'", "\\'")
    return f"'{escaped}'"  # quoted: a string choice "true" or "1" stays a string


def overrides(params: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that set a trial's sampled values."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]
