"""The one typed run configuration: loaded from TOML, overridable with ``key=value`` pairs.

Every run writes the resolved configuration beside its results, so a result always names
exactly what produced it.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedrec.federated.strategies import STRATEGIES


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
    name: Literal["popularity", "mf", "gmf", "mlp", "neumf", "pfedrec", "two-tower"] = "mf"
    dim: int = Field(64, ge=0)
    """Embedding size (for NeuMF: of the GMF part). Only two-tower accepts 0 (features only)."""
    mlp_layers: list[int] = Field(default_factory=lambda: [128, 64, 32])
    """MLP tower widths; the first is the concatenated user+item embedding size."""
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.01, gt=0)
    use_bias: bool = True
    tower_layers: list[int] = Field(default_factory=lambda: [64, 32])
    """Two-tower: widths of each tower's layers after its input (the last is the output)."""
    user_features: list[str] | None = None
    """Two-tower: profile columns to use (None: every usable one). They stay on the device."""
    item_features: list[str] | None = None
    """Two-tower: item attribute columns to use (None: every usable one)."""

    @model_validator(mode="after")
    def _dim_zero_only_for_two_tower(self) -> ModelConfig:
        if self.dim == 0 and self.name != "two-tower":
            raise ValueError(f"model.dim must be >= 1 for {self.name!r} (0 is two-tower only)")
        return self


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
    dense_lr: float | None = Field(None, gt=0)
    """Step size for dense (tower) parameters; None: ``lr``. Embedding rows each see a few
    samples per round while towers see all of them, so they often want different steps."""
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
    strategy: str = "fedavg"
    """Server optimiser: a name registered in :data:`fedrec.federated.strategies.STRATEGIES`;
    it reads the settings below that it names."""
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
    ema_decay: float = Field(0.0, ge=0, lt=1)
    """Validate, select and release an exponential moving average of the shared parameters
    over rounds (weights ``ema_decay**age``, debiased) instead of the last round's. Training
    continues from the last round's. Under DP it is post-processing (no privacy cost) that
    averages per-round noise; 0 uses the last round's parameters."""
    local: LocalConfig = Field(default_factory=LocalConfig)

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, name: str) -> str:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
        return name


class SecAggConfig(_Section):
    """Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum."""

    enabled: bool = False
    neighbours: int | None = Field(None, ge=2)
    """Neighbours k per client in the masking graph; None: derived with the threshold from
    the round's size, ``max_dropout``, ``collusion``, ``target_failure`` and
    ``security_bits`` (Bell et al. 2020 sec. 4; ``fedrec.privacy.secagg.params``)."""
    threshold: float | None = Field(None, gt=0, le=1)
    """Fraction of a client's k + 1 share holders needed to rebuild its secrets; None: the
    smallest the security analysis allows. A hand-set k or threshold that the analysis finds
    short of ``target_failure`` or insecure is used, with a warning."""
    max_dropout: float | None = Field(None, ge=0, le=0.9)
    """Dropout rate the graph and threshold must survive; None: ``federated.dropout`` + 0.05,
    at least 0.1."""
    collusion: float = Field(0.01, ge=0, lt=0.5)
    """Fraction of a round's clients assumed to collude with the server."""
    target_failure: float = Field(1e-6, gt=0, lt=1)
    """Acceptable probability that a round aborts for want of surviving share holders."""
    security_bits: float = Field(40.0, gt=0, le=128)
    """sigma: the server learns more than the sum with probability at most 2^-sigma."""
    clip: float = Field(4.0, gt=0)
    """Every uploaded value is clipped to [-clip, clip] before fixed-point quantisation."""
    bits: Literal[32, 64] = 32
    """Ring Z_{2^bits} of the masked sums."""


class DPConfig(_Section):
    """User-level DP-FedAvg (McMahan et al. 2018) with accounting by dp-accounting."""

    enabled: bool = False
    mode: Literal["central", "distributed"] = "central"
    """``central``: the (trusted) server noises the sum; ``distributed``: each client adds its
    share of the noise before secure aggregation, so nobody sees an unnoised sum."""
    clip: float = Field(1.0, gt=0)
    """L2 bound on one client's whole upload (rows, per-row counts, dense tensors)."""
    noise_multiplier: float | None = Field(None, ge=0)
    target_epsilon: float | None = Field(None, gt=0)
    """The budget: training stops before a round that would exceed it. Without
    ``noise_multiplier``, the noise is calibrated so ``federated.rounds`` rounds spend it.
    It is spent against the configured threat model: ``distributed``, the server, which picks
    the participants (no amplification by sampling); ``central``, the released model."""
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "pld"] = "rdp"
    count_scale: float = Field(0.1, gt=0)
    """With ``item_aggregation = "per-row"``, each touched item row also carries ``count_scale``
    in a per-row count vector (clipped and noised with the rows), so per-row averaging divides
    by a private count. Its noise is z C / count_scale clients per row, which over long runs can
    swamp the rows: ``item_aggregation = "fedavg"`` (a public denominator, no counts) is the
    sturdier choice under DP."""
    min_count: float = Field(1.0, gt=0)
    """Noisy per-row counts are floored here before dividing."""
    adaptive_clip: bool = False
    """Adaptive clipping (Andrew et al. 2021): track a quantile of update norms privately."""
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_lr: float = Field(0.2, gt=0)
    clip_count_stddev: float | None = Field(None, gt=0)
    """Noise on the count of clients under the clip; None: expected clients / 20."""
    clip_weights: dict[str, float] = Field(default_factory=dict)
    """How the clip bound is shared between parameters: each named shared parameter's update
    (e.g. ``"item_bias.weight"``, ``"global_bias"``) is multiplied by its weight before the
    upload is clipped and noised and divided by it after, so its noise is ``z C / weight``
    while it claims ``weight^2`` times its share of the clipped norm. 0 keeps a parameter at
    its initial value (MF's global bias: every user's private bias absorbs it, and it moves no
    ranking). Unnamed parameters weigh 1."""
    dropout_allowance: float | None = Field(None, ge=0, le=0.9)
    """Distributed DP: the fraction of the expected clients that may drop out before a round
    aborts. Each client adds noise for ``(1 - allowance)`` of them, so the sum over all of them
    carries ``1 / (1 - allowance)`` times the central noise variance. None:
    ``federated.dropout + 0.1`` (at most 0.9)."""

    @model_validator(mode="after")
    def _check_clip_weights(self) -> DPConfig:
        for name, w in self.clip_weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(
                    f"privacy.dp.clip_weights[{name!r}] = {w}: weights must be finite and >= 0"
                )
        return self


class LDPConfig(_Section):
    """Local DP: each client clips and noises its own upload every round."""

    enabled: bool = False
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    epsilon: float = Field(8.0, gt=0)
    """Per-round epsilon of one client's upload."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """Gaussian mechanism: the per-round delta, and the delta of the composed epsilon."""
    clip: float = Field(1.0, gt=0)


class ObfuscationConfig(_Section):
    """Pseudo-item obfuscation (Lin et al. 2020, FedRec): extra uploaded rows for unrated items."""

    pseudo_items: int = Field(0, ge=0)
    """Unrated items each client adds to its upload per round."""
    virtual_labels: Literal["positive", "model"] = "positive"
    """``positive``: FedRec's virtual ratings (label 1: they pass for real positives, and
    training sees them as such); ``model``: labels drawn from the model's own prediction
    (zero-mean updates, but unrated items then mostly look like negatives)."""


class HEConfig(_Section):
    """CKKS homomorphic encryption of uploads (TenSEAL; ``pip install 'fedrec[he]'``)."""

    enabled: bool = False
    poly_modulus_degree: Literal[8192, 16384] = 8192


class PrivacyConfig(_Section):
    """What protects each upload (``[privacy.*]``); all off by default."""

    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    ldp: LDPConfig = Field(default_factory=LDPConfig)
    obfuscation: ObfuscationConfig = Field(default_factory=ObfuscationConfig)
    he: HEConfig = Field(default_factory=HEConfig)

    @property
    def dense_uploads(self) -> bool:
        """Uploads of a fixed, data-independent shape (the whole item table): needed whenever
        the server must not learn which rows a client touched, or noise must cover them all."""
        return (
            self.secagg.enabled
            or self.he.enabled
            or self.ldp.enabled
            or (self.dp.enabled and self.dp.mode == "distributed")
        )

    @property
    def any(self) -> bool:
        return self.dense_uploads or self.dp.enabled or self.obfuscation.pseudo_items > 0


class DeployConfig(_Section):
    """A networked run on Flower (``fedrec deploy``); the simulator ignores this section."""

    min_clients: int | None = Field(None, ge=1)
    """Clients that must be connected before round 1; None: every client of the partition."""
    wait_clients_s: float = Field(300.0, gt=0)
    """How long the server waits for them before giving up."""
    reply_timeout_s: float = Field(180.0, gt=0)
    """How long the server waits for the replies of one exchange; clients that miss it are
    dropped from the round (secure aggregation recovers without them)."""
    max_upload_mb: float = Field(512.0, gt=0)
    """Uploads larger than this are rejected (a hostile or broken client)."""
    client_randomness: Literal["private", "run-seed"] = "private"
    """``private``: each client draws its negatives, pseudo-items and noise from a secret seed
    kept on its device; ``run-seed``: from the run's public seed, exactly as the simulator does
    (reproduces a simulated run bit for bit, but lets the server recompute every client's
    negatives and noise: for testing only)."""


class TrackingConfig(_Section):
    """Experiment tracking (``pip install 'fedrec[tracking]'``); it never changes results.

    The store is ``$MLFLOW_TRACKING_URI`` when set, else a local SQLite store beside the run
    directory (``<parent>/mlflow.db``), which needs no server."""

    mlflow: bool = False
    experiment: str = Field("fedrec", min_length=1)
    run_name: str | None = None
    """None: the run directory's name."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra tags on the MLflow run, beside data set, model, mode and privacy mechanisms."""


class AuditConfig(_Section):
    """Canary auditing during a federated run (``fedrec run`` then writes ``audit.json``)."""

    canaries: int = Field(0, ge=0)
    """Canary clients added after the real ones, each inserted on a fair secret coin (the
    one-run bound of Steinke et al. 2023 needs probability 1/2); 0: no audit."""
    canary_items: int = Field(20, ge=1)
    """Items (drawn uniformly) whose rows carry each canary's direction."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Confidence of the empirical epsilon lower bound."""


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
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @property
    def upload_count_scale(self) -> float | None:
        """The per-row count entry of protected uploads; None when rows are averaged over a
        public denominator (``item_aggregation = "fedavg"``) and counts would only spend the
        clipping bound."""
        if self.federated.item_aggregation != "per-row":
            return None
        return self.privacy.dp.count_scale

    @property
    def upload_weights(self) -> dict[str, float]:
        """Each shared parameter's weight inside a clipped upload (user-level DP only)."""
        return dict(self.privacy.dp.clip_weights) if self.privacy.dp.enabled else {}

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
        if self.audit.canaries:
            if self.mode != "federated":
                raise ValueError("audit.canaries needs mode = 'federated' (canaries are clients)")
            if self.audit.canaries < 4:
                raise ValueError(
                    f"audit.canaries = {self.audit.canaries}: use 0 (off) or at least 4, so "
                    "both coins can come up more than once"
                )
            if fed.weighted_sampling:
                raise ValueError(
                    "audit.canaries needs federated.weighted_sampling = false: canaries have "
                    "no data size to be weighted by"
                )
        self._check_privacy()
        return self

    def _check_privacy(self) -> None:
        priv, fed = self.privacy, self.federated
        if not priv.any:
            return
        if self.mode != "federated":
            raise ValueError("[privacy] mechanisms apply to federated runs (mode = 'federated')")
        if priv.obfuscation.pseudo_items and self.train.loss != "bce":
            raise ValueError("privacy.obfuscation.pseudo_items needs train.loss = 'bce'")
        if priv.secagg.enabled and priv.he.enabled:
            raise ValueError("choose one of privacy.secagg and privacy.he, not both")
        if priv.dp.enabled and priv.ldp.enabled:
            raise ValueError("choose one of privacy.dp (user-level) and privacy.ldp (local)")
        sa = priv.secagg
        if sa.enabled and sa.max_dropout is not None and sa.max_dropout < fed.dropout:
            raise ValueError(
                f"privacy.secagg.max_dropout = {sa.max_dropout} is below federated.dropout = "
                f"{fed.dropout}: rounds would abort for want of surviving share holders"
            )
        if priv.dp.enabled:
            dp = priv.dp
            if dp.noise_multiplier is None and dp.target_epsilon is None:
                raise ValueError("privacy.dp needs noise_multiplier, target_epsilon, or both")
            if dp.mode == "distributed" and not priv.secagg.enabled:
                raise ValueError(
                    "privacy.dp.mode = 'distributed' needs privacy.secagg.enabled = true "
                    "(without secure aggregation each client's small noise share protects nothing)"
                )
            if dp.dropout_allowance is not None and dp.dropout_allowance < fed.dropout:
                raise ValueError(
                    f"privacy.dp.dropout_allowance = {dp.dropout_allowance} is below "
                    f"federated.dropout = {fed.dropout}: most rounds would abort for too few "
                    "survivors to carry the noise"
                )
            if fed.weighted_sampling:
                raise ValueError(
                    "privacy.dp accounts uniform sampling only: set federated.weighted_sampling "
                    "= false"
                )
        if (priv.dp.enabled or priv.dense_uploads) and fed.weighting != "uniform":
            raise ValueError(
                "privacy mechanisms need federated.weighting = 'uniform': an example-weighted "
                "upload's size depends on private data (unbounded sensitivity, ring overflow)"
            )
        if priv.dense_uploads and fed.encoding != "float32":
            raise ValueError(
                "dense protected uploads are quantised by the mechanism itself; "
                "keep federated.encoding = 'float32'"
            )


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


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """A (raw or dumped) configuration as ``section.key -> value``, keys exactly as ``--set``
    takes them; non-string values as JSON."""
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node if isinstance(node, str) else json.dumps(node)}


def dump_config(cfg: RunConfig) -> str:
    """The resolved configuration as TOML (None values are omitted: TOML has no null)."""
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
