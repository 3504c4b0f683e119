"""Search spaces: which config keys a study varies, over which ranges.

Keys are exactly those of ``--set`` (``federated.local.lr``), and a trial's values are applied
through the same override code, so a space can name any option the config has. A space file
(TOML) overrides or extends the defaults::

    [params]
    "federated.local.lr" = { low = 1.0, high = 32.0, log = true }
    "model.dim" = { choices = [16, 32, 64] }
    "federated.local.epochs" = { low = 1, high = 3 }     # integer bounds: an integer range
    "federated.local.weight_decay" = false               # drop a default

``defaults = false`` at the top starts from an empty space instead of the defaults.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec.config import ConfigError, RunConfig, apply_overrides

if TYPE_CHECKING:
    import optuna

Value = bool | int | float | str


@dataclass(frozen=True)
class Dim:
    """One searched key: a float or integer range (optionally log-scaled) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Value, ...] | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial, key: str) -> Value:
        if self.choices is not None:
            value = trial.suggest_categorical(key, list(self.choices))
            assert value is not None  # choices never hold None
            return value
        assert self.low is not None and self.high is not None
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log)

    def sample(self) -> Value:
        """A value inside the space, to check that the key accepts it."""
        if self.choices is not None:
            return self.choices[0]
        assert self.low is not None
        return int(self.low) if self.integer else float(self.low)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        return spec


Space = dict[str, Dim]


def _range(low: float, high: float, *, log: bool = False) -> Dim:
    return Dim(low=low, high=high, log=log)


def _ints(low: int, high: int) -> Dim:
    return Dim(low=low, high=high, integer=True)


def default_space(cfg: RunConfig) -> Space:
    """Learning rates, server step, negatives, dimension, weight decay and local epochs, with
    ranges that fit the model, mode and optimizer of ``cfg``."""
    model = cfg.model.name
    if model == "popularity":
        raise ConfigError("model.name = 'popularity' has no hyperparameters to tune")
    space: Space = {}
    if cfg.mode == "federated":
        fed, local = cfg.federated, cfg.federated.local
        # The local loss is a batch mean, so plain SGD needs steps of order batch_size x the
        # per-sample rate; Adam's steps are scale-free.
        sgd = local.optimizer == "sgd"
        space["federated.local.lr"] = (
            _range(0.5, 32.0, log=True) if sgd else _range(1e-4, 0.1, log=True)
        )
        if model in ("gmf", "mlp", "neumf", "two-tower", "pfedrec"):
            space["federated.local.dense_lr"] = _range(1e-3, 1.0, log=True)
        if fed.strategy in ("fedadam", "fedyogi", "fedadagrad"):
            space["federated.server_lr"] = _range(1e-3, 0.3, log=True)
        else:
            space["federated.server_lr"] = _range(0.5, 4.0, log=True)
        space["federated.local.negatives"] = _ints(1, 8)
        space["federated.local.weight_decay"] = _range(1e-7, 1e-2, log=True)
        space["federated.local.epochs"] = _ints(1, 3)
        if cfg.privacy.dp.enabled:
            space["privacy.dp.clip"] = _range(0.05, 5.0, log=True)
    else:
        adam = cfg.train.optimizer == "adam"
        space["train.lr"] = _range(1e-4, 3e-2, log=True) if adam else _range(1e-3, 1.0, log=True)
        space["train.negatives"] = _ints(1, 8)
        space["train.weight_decay"] = _range(1e-8, 1e-3, log=True)
        space["train.batch_size"] = Dim(choices=(256, 512, 1024, 2048))
    dims: tuple[Value, ...] = (16, 32, 64) if cfg.mode == "federated" else (16, 32, 64, 128)
    space["model.dim"] = Dim(choices=dims)
    return space


def _leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables flattened to dotted keys, down to each key's spec (so quoted and unquoted
    dotted keys both work)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and not ({"low", "high", "choices"} & set(v)):
            out.update(_leaves(v, key))
        else:
            out[key] = v
    return out


def parse_dim(key: str, spec: Any) -> Dim:
    """One space entry; errors name the key."""
    if not isinstance(spec, dict):
        raise ConfigError(f"space {key!r}: expected {{low, high[, log]}} or {{choices}}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise ConfigError(f"space {key!r}: unknown field(s) {sorted(unknown)}")
    if "choices" in spec:
        choices = spec["choices"]
        ok = isinstance(choices, list) and choices
        if not ok or not all(isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"space {key!r}: choices must be a non-empty list of scalars")
        return Dim(choices=tuple(choices))
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high))
    if not numbers:
        raise ConfigError(f"space {key!r}: low and high must be numbers")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if not low < high:
        raise ConfigError(f"space {key!r}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"space {key!r}: a log range needs low > 0")
    integer = isinstance(low, int) and isinstance(high, int)
    return Dim(low=low, high=high, log=log, integer=integer)


def load_space(cfg: RunConfig, path: Path | None) -> Space:
    """The default space of ``cfg``, overridden and extended by the file at ``path``."""
    if path is None:
        space = default_space(cfg)
    else:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"search space {path}: {exc}") from exc
        unknown = set(raw) - {"defaults", "params"}
        if unknown:
            raise ConfigError(f"search space {path}: unknown top-level key(s) {sorted(unknown)}")
        space = default_space(cfg) if raw.get("defaults", True) else {}
        for key, spec in _leaves(raw.get("params", {})).items():
            if spec is False:
                space.pop(key, None)
            else:
                space[key] = parse_dim(key, spec)
    if not space:
        raise ConfigError("the search space is empty")
    check_space(cfg, space)
    return space


def overrides_of(params: dict[str, Value]) -> list[str]:
    """``--set`` style overrides; JSON scalars are also TOML scalars."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def apply_params(cfg: RunConfig, params: dict[str, Value]) -> RunConfig:
    """``cfg`` with a trial's values, validated like any configuration."""
    raw = apply_overrides(cfg.model_dump(mode="json", exclude_none=True), overrides_of(params))
    try:
        return RunConfig.model_validate(raw)
    except ValueError as exc:
        message = f"search space values {params} give an invalid configuration:\n{exc}"
        raise ConfigError(message) from exc


def check_space(cfg: RunConfig, space: Space) -> None:
    """Every key must be a config option that accepts values of its range."""
    for key, dim in space.items():
        try:
            apply_params(cfg, {key: dim.sample()})
        except ConfigError as exc:
            raise ConfigError(f"search space key {key!r} is not usable: {exc}") from exc


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
    return {k: d.to_dict() for k, d in sorted(space.items())}


def space_from_dict(raw: dict[str, dict[str, Any]]) -> Space:
    return {k: parse_dim(k, v) for k, v in raw.items()}
