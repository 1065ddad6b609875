"""The model's options (YAML section `model:`; CLI flags override). docs/model-config.md
explains each with an example; `rayrec train --help` lists the common ones.

One flat dataclass on purpose: every option is one `--set model.NAME=...`-style key for
sweeps, and a YAML file reads like the list below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rayrec.config_io import at_least, probabilities

RNN_ARCHS = ("gru", "lstm")
MASKINGS = ("clm", "mlm", "plm", "rtd")
AGGREGATIONS = ("concat", "elementwise-sum", "elementwise-sum-item-multi")
CONTINUOUS = ("scalar", "projection", "soft_onehot")
INITS = ("normal", "truncated_normal", "uniform", "xavier")
LOSSES = ("full", "sampled")
EVAL_ON = ("last", "all")
SUMMARIES = ("last", "first", "mean")
TASKS = ("binary", "regression")
SWITCHES = ("auto", "off")


@dataclass
class HeadConfig:
    """A sequence-level head next to next-item prediction (multi-task)."""
    task: str                      # binary | regression
    target: str                    # scalar column of the dataset holding the label
    summary: str = "last"          # how the sequence becomes one vector: last | first | mean
    weight: float = 1.0            # loss weight

    def __post_init__(self):
        _choice("heads[].task", self.task, TASKS)
        _choice("heads[].summary", self.summary, SUMMARIES)
        at_least("model.heads[]", self, ("weight",), 0)


@dataclass
class ModelConfig:
    # --- body ---------------------------------------------------------------------------
    # Defaults: the combination measured to learn fastest on small data (GPT-2, causal LM);
    # XLNet with mlm is the reference tutorial's model and needs more epochs.
    arch: str = "gpt2"             # xlnet gpt2 bert roberta albert electra longformer reformer llama
                                   # mistral gru lstm, or another transformers model_type
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    max_len: int = 20              # positions; longer sessions keep their last max_len items
    dropout: float = 0.1
    hf_config: dict[str, Any] = field(default_factory=dict)  # extra transformers config keys

    # --- training objective ---------------------------------------------------------------
    masking: str = "clm"           # clm | mlm | plm | rtd
    mlm_probability: float = 0.2   # mlm/rtd: fraction of positions masked (at least one)
    plm_probability: float = 1 / 6  # plm: fraction of positions predicted
    plm_max_span: int = 5          # plm: longest span of consecutive predicted positions
    rtd_weight: float = 1.0        # rtd: discriminator loss weight (ELECTRA used 50 with a separate
                                   # small generator; here the generator shares the body)
    rtd_sample_from_batch: bool = False  # rtd: replacements drawn from the batch, not the generator
    eval_on: str = "last"          # last: predict each session's last item | all: every position

    # --- inputs ---------------------------------------------------------------------------
    features: list[str] = field(default_factory=list)  # columns besides the item id (lists or scalars)
    embedding_dim: int | None = None   # categorical tables; default d_model (or inferred, below)
    embedding_dims: dict[str, int] = field(default_factory=dict)  # per column
    infer_embedding_dims: bool = False  # dim = multiplier * cardinality ** 0.25 (rounded up to 8)
    embedding_dim_multiplier: float = 2.0
    shared_embeddings: dict[str, str] = field(default_factory=dict)  # column -> column whose table it uses
    embedding_init: str = "normal"     # normal | truncated_normal | uniform | xavier
    embedding_init_std: float = 0.02
    pretrained_embeddings: dict[str, dict] = field(default_factory=dict)  # column -> {path, trainable}
    continuous: str = "scalar"         # scalar | projection | soft_onehot
    continuous_projection: list[int] = field(default_factory=lambda: [64])  # MLP layer sizes
    soft_onehot_buckets: int = 20
    soft_onehot_dim: int | None = None  # default: the categorical embedding dim
    aggregation: str = "concat"        # concat | elementwise-sum | elementwise-sum-item-multi
    input_mlp: list[int] = field(default_factory=list)  # hidden sizes of an MLP from features to d_model
    layer_norm: bool = True
    input_dropout: float | None = None  # default: dropout
    swap_noise: float = 0.0            # training: probability that an id is replaced by one from the batch

    # --- heads ----------------------------------------------------------------------------
    tie_weights: bool = True           # output layer = item embeddings (projected when dims differ)
    temperature: float = 1.0           # logits are divided by it
    normalize: bool = False            # cosine scores: unit session and item vectors (set temperature ~0.05-0.1)
    label_smoothing: float = 0.0
    loss: str = "full"                 # full softmax | sampled softmax
    sampled_negatives: int = 1000      # sampled: log-uniform negatives per batch (0: none)
    sampled_in_batch: bool = True      # sampled: the batch's other targets are negatives too
    sampled_logq: bool = True          # sampled: subtract log Q(item) from sampled logits
    next_item_weight: float = 1.0      # loss weight of next-item prediction
    heads: list[HeadConfig] = field(default_factory=list)

    # --- acceleration (rayrec.accel: the same functions and parameters, computed faster) ---
    accel: str = "auto"                # auto: rayrec's forwards and kernels where they apply | off: HF and torch as they are
    accel_kernels: str = "auto"        # auto: the C kernels where `rayrec build-kernels` built them | off: their torch passes
    accel_unpad: bool = True           # bodies compute only the real positions (false: the whole padded grid)

    def __post_init__(self):
        self.heads = [h if isinstance(h, HeadConfig) else _head(h) for h in self.heads]
        _choice("model.masking", self.masking, MASKINGS)
        _choice("model.aggregation", self.aggregation, AGGREGATIONS)
        _choice("model.continuous", self.continuous, CONTINUOUS)
        _choice("model.embedding_init", self.embedding_init, INITS)
        _choice("model.loss", self.loss, LOSSES)
        _choice("model.eval_on", self.eval_on, EVAL_ON)
        _choice("model.accel", self.accel, SWITCHES)
        _choice("model.accel_kernels", self.accel_kernels, SWITCHES)
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError("model.arch must name a body, e.g. gpt2, xlnet, bert, llama or gru")
        for name in ("mlm_probability", "plm_probability"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"model.{name} must lie in (0, 1), got {getattr(self, name)}")
        probabilities("model", self, ("dropout", "input_dropout", "label_smoothing", "swap_noise"))
        if self.max_len < 2:
            raise ValueError(f"model.max_len must be >= 2 (an input and a target), got {self.max_len}")
        at_least("model", self, ("d_model", "n_layer", "n_head", "plm_max_span", "embedding_dim",
                                 "soft_onehot_buckets", "soft_onehot_dim"), 1)
        if self.arch not in RNN_ARCHS and self.d_model % self.n_head:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        for name, value in [("embedding_dims." + k, v) for k, v in self.embedding_dims.items()] + \
                [("continuous_projection[]", v) for v in self.continuous_projection] + \
                [("input_mlp[]", v) for v in self.input_mlp]:
            if value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        at_least("model", self, ("rtd_weight", "next_item_weight", "sampled_negatives"), 0)
        at_least("model", self, ("temperature", "embedding_init_std", "embedding_dim_multiplier"), 0, strict=True)
        if self.loss == "sampled" and not (self.sampled_negatives > 0 or self.sampled_in_batch):
            raise ValueError("model.loss sampled needs sampled_negatives > 0 or sampled_in_batch")
        for col, spec in self.pretrained_embeddings.items():
            if not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "trainable"}:
                raise ValueError(f"model.pretrained_embeddings.{col}: expected {{path: FILE, trainable: bool}}")

    @property
    def is_rnn(self) -> bool:
        return self.arch in RNN_ARCHS


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _head(data: Any) -> HeadConfig:
    if not isinstance(data, dict):
        raise ValueError(f"model.heads: each head is a mapping {{task, target, summary, weight}}; got {data!r}")
    unknown = set(data) - {"task", "target", "summary", "weight"}
    if unknown or "task" not in data or "target" not in data:
        raise ValueError(f"model.heads: a head needs task and target (and may set summary, weight); got {data}")
    return HeadConfig(**data)
