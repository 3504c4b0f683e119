"""The one typed run configuration: loaded from TOML, overridable with ``key=value`` pairs.

Every run writes the resolved configuration beside its results, so a result always names
exactly what produced it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which data set, how it becomes implicit feedback, and how it is split."""

    name: str = "ml-100k"
    """A registered data set (``ml-100k``, ``ml-1m``, ``ml-latest-small``, ``lastfm-2k``,
    ``filmtrust``) or ``table`` for your own CSV/Parquet file (see ``table``)."""
    dir: Path | None = None
    """Where the data set lives; default: ``$FEDREC_DATA_DIR``, then the cache, then download."""
    implicit: bool = True
    """Treat interactions as implicit feedback (ranking); False keeps ratings (RMSE/MAE)."""
    implicit_threshold: float | None = None
    """Keep only ratings >= this as positives; None keeps every interaction."""
    split: Literal["loo-time", "loo-random", "ncf", "ratio"] = "loo-time"
    test_ratio: float = Field(0.2, gt=0, lt=1)
    valid_ratio: float = Field(0.1, ge=0, lt=1)
    eval_negatives: int = Field(99, ge=1)
    """Sampled-protocol negatives per held-out item (ignored when the split fixes them)."""
    table: dict[str, Any] | None = None
    """For ``name = "table"``: path, format and column mapping of your own file."""


class ModelConfig(_Section):
    name: Literal["popularity", "mf", "gmf", "mlp", "neumf"] = "mf"
    dim: int = Field(64, ge=1)
    """Embedding size (for NeuMF: of the GMF part)."""
    mlp_layers: list[int] = Field(default_factory=lambda: [128, 64, 32])
    """MLP tower widths; the first is the concatenated user+item embedding size."""
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.01, gt=0)
    use_bias: bool = True


class TrainConfig(_Section):
    loss: Literal["bce", "bpr", "mse"] = "bce"
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    """L2 penalty on the embeddings used in each batch."""
    negatives: int = Field(4, ge=0)
    """Sampled negatives per positive (bce) or per triple (bpr)."""
    patience: int = Field(3, ge=0)
    """Stop after this many evaluations without a better validation metric; 0 disables."""
    eval_every: int = Field(1, ge=1)
    monitor: str = "NDCG@10"
    """Validation metric for early stopping and model selection."""


class EvalConfig(_Section):
    protocol: Literal["sampled", "full"] = "sampled"
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    also_full: bool = False
    """Also report full-ranking test metrics alongside the sampled protocol."""


class LocalConfig(_Section):
    """How each client trains in a round (``[federated.local]``)."""

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    negatives: int = Field(4, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    prox_mu: float = Field(0.0, ge=0)
    """FedProx proximal weight; 0 is plain FedAvg local training."""


class FederatedConfig(_Section):
    """Federated training (``mode = "federated"``): clients, sampling, aggregation, rounds."""

    rounds: int = Field(100, ge=1)
    partition: Literal["user", "random", "column"] = "user"
    """``user``: one client per user (cross-device); ``random``/``column``: silos of users."""
    silos: int = Field(10, ge=1)
    silo_column: str | None = None
    """User feature column that defines the silos when ``partition = "column"``."""
    sampling: Literal["all", "fraction", "count", "poisson"] = "all"
    fraction: float = Field(0.1, gt=0, le=1)
    count: int = Field(100, ge=1)
    rate: float = Field(0.1, gt=0, le=1)
    """Poisson inclusion probability per client and round."""
    weighted_sampling: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    """Fraction of selected clients that fail before answering."""
    strategy: Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    weighting: Literal["examples", "uniform"] = "examples"
    item_aggregation: Literal["per-row", "fedavg"] = "per-row"
    """``per-row``: each item row averaged over the clients that trained it."""
    encoding: Literal["float32", "float16", "int8"] = "float32"
    engine: Literal["batched", "sequential"] = "batched"
    chunk_samples: int = Field(2_000_000, ge=1)
    eval_every: int = Field(5, ge=1)
    patience: int = Field(5, ge=0)
    checkpoint_every: int = Field(10, ge=0)
    local: LocalConfig = Field(default_factory=LocalConfig)


class RunConfig(_Section):
    """Top level of a run configuration file."""

    mode: Literal["centralized", "federated"] = "centralized"
    seed: int = 0
    threads: int | None = None
    """torch intra-op threads; None leaves torch's default."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.data.name == "table" and not self.data.table:
            raise ValueError("data.name = 'table' needs a [data.table] section (path, columns)")
        if self.data.split == "ncf" and self.data.name != "ml-1m":
            raise ValueError("data.split = 'ncf' exists only for data.name = 'ml-1m'")
        if not self.data.implicit and self.train.loss != "mse":
            raise ValueError("explicit ratings (data.implicit = false) need train.loss = 'mse'")
        fed = self.federated
        if self.mode == "federated":
            if self.model.name == "popularity":
                raise ValueError("model.name = 'popularity' has nothing to train federatedly")
            if fed.partition == "column" and not fed.silo_column:
                raise ValueError("federated.partition = 'column' needs federated.silo_column")
            if self.model.dropout > 0:
                raise ValueError("federated training needs model.dropout = 0")
        return self


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says why."""


def _parse_value(text: str) -> Any:
    """Parse an override value as TOML (numbers, booleans, lists, quoted strings); else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (returns a new dict)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value.strip())
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}:\n{exc}") from exc


def dump_config(cfg: RunConfig) -> str:
    """The resolved configuration as TOML (None values are omitted: TOML has no null)."""
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
