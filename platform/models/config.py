"""The model's options (YAML section `model:`; CLI flags override)."""
from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("xlnet", "gpt2")
MASKINGS = ("mlm", "clm")


@dataclass
class ModelConfig:
    # Defaults: the combination measured to learn fastest on small data (GPT-2, causal LM);
    # XLNet with mlm is the reference tutorial's model and needs more epochs.
    arch: str = "gpt2"             # HF transformers body: xlnet | gpt2
    masking: str = "clm"           # training objective: mlm (masked) | clm (causal)
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    max_len: int = 20              # positions; longer sessions keep their last max_len items
    dropout: float = 0.1
    mlm_probability: float = 0.2   # fraction of positions masked in mlm training (at least one)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.masking not in MASKINGS:
            raise ValueError(f"model.masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.arch == "gpt2" and self.masking == "mlm":
            raise ValueError("gpt2 attends causally and cannot train with mlm; use --masking clm")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0 < self.mlm_probability < 1:
            raise ValueError("mlm_probability must lie in (0, 1)")
