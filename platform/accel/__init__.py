"""Opt-in CPU fast paths: the same functions as HF's and torch's modules, computed faster.

models/ builds plain HF and torch modules and never imports this package. `apply(model)`
is the one seam: it walks the model once and, for each module whose class is in REGISTRY,
swaps in its replacement, a subclass with the same parameters and names whose forward
computes the same function (values and gradients, tested per entry) and falls back to the
parent's forward for any call it does not cover. Each entry is imported only when a model
holds its class, so a GRU run never imports the GPT-2 or XLNet code.

What runs is decided once per model from its ModelConfig (`accel`, `accel_kernels`,
`accel_unpad`) and this machine (the C kernels built by `rayrec build-kernels`, the
transformers version), stored on every module as `rayrec_accel`, and returned as a report
that the trainer writes to metrics.json: which path ran, and why a part did not.

The fast paths lean on transformers internals (attention interface, masking utils, the
modules' attribute names), so they run only on the transformers versions pyproject's
`accel` extra declares; on any other they switch themselves off with one logged line.
"""
from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import asdict, dataclass, field

from torch import nn

from rayrec.models.config import ModelConfig

log = logging.getLogger("rayrec.accel")

# module class ("module:Class") -> its replacement, imported lazily
REGISTRY = {
    "torch.nn.modules.dropout:Dropout": "rayrec.accel.dropout:FastDropout",
    "rayrec.models.losses:CatalogueCrossEntropy": "rayrec.accel.losses:FusedCrossEntropy",
    "rayrec.models.masking:ProposalSampler": "rayrec.accel.sampling:FastProposalSampler",
    "rayrec.models.bodies:RNNBody": "rayrec.accel.gru:FastRNNBody",
    "transformers.models.gpt2.modeling_gpt2:GPT2Model": "rayrec.accel.gpt2:FastGPT2Model",
    "transformers.models.llama.modeling_llama:LlamaModel": "rayrec.accel.llama:FastLlamaModel",
    "transformers.models.bert.modeling_bert:BertModel": "rayrec.accel.bert:FastBertModel",
    "transformers.models.electra.modeling_electra:ElectraModel": "rayrec.accel.bert:FastElectraModel",
    "transformers.models.roberta.modeling_roberta:RobertaModel": "rayrec.accel.bert:FastRobertaModel",
    "transformers.models.xlnet.modeling_xlnet:XLNetModel": "rayrec.accel.xlnet:FastXLNetModel",
}
TRANSFORMERS_ENTRIES = {k for k in REGISTRY if k.startswith("transformers.")}


@dataclass(frozen=True)
class Accel:
    """What the fast modules of one model may use (set on each as `rayrec_accel`)."""
    kernels: bool   # the C kernels (else their torch passes, which draw the same numbers)
    unpad: bool     # bodies compute only the real positions


@dataclass
class AccelReport:
    """Which path a model runs, as metrics.json records it."""
    path: str                                        # fast | plain
    replaced: list[str] = field(default_factory=list)  # "GPT2Model -> FastGPT2Model", once per class
    kernels: str = "off"                             # built | off (model.accel_kernels) | not built: why
    attention: str = "hf"                            # rayrec_sdpa | hf
    unpad: bool = False
    why: str = ""                                    # why the path is plain or partial, "" when it is not

    def to_dict(self) -> dict:
        return asdict(self)


def apply(model: nn.Module, cfg: ModelConfig) -> AccelReport:
    """Swap the registered modules of `model` (a SessionModel, or any part of one) for
    their fast versions, per its ModelConfig; returns what runs."""
    if cfg.accel == "off":
        return AccelReport(path="plain", why="model.accel: off")
    reason = transformers_unsupported()
    from rayrec.accel import kernels

    use_c = cfg.accel_kernels != "off" and kernels.library() is not None
    if cfg.accel_kernels == "off":
        kernel_state = "off (model.accel_kernels: off)"
    else:
        kernel_state = kernels.status()
        if not use_c:
            _once(f"rayrec.accel: C kernels {kernel_state}; running their torch passes")
    state = Accel(kernels=use_c, unpad=cfg.accel_unpad)
    report = AccelReport(path="fast", kernels=kernel_state, unpad=cfg.accel_unpad, why=reason or "")
    if reason:
        _once(f"rayrec.accel: {reason}; HF's models run as they are")
    swapped: dict[str, str] = {}
    for module in model.modules():
        key = f"{type(module).__module__}:{type(module).__qualname__}"
        if key in REGISTRY and not (reason and key in TRANSFORMERS_ENTRIES):
            fast = _load(REGISTRY[key])
            swapped.setdefault(type(module).__name__, fast.__name__)
            module.__class__ = fast
        module.rayrec_accel = state
    if not reason:
        report.attention = _fast_attention(model)
    report.replaced = [f"{a} -> {b}" for a, b in sorted(swapped.items())]
    return report


def _fast_attention(model: nn.Module) -> str:
    """HF models on transformers' attention interface take rayrec's attention (its
    dropout on the probabilities is the cheap hashed mask; otherwise it is HF's sdpa)."""
    from transformers import PreTrainedModel

    from rayrec.accel import attention

    done = "hf"
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(type(module), "_supports_attention_backend", False):
            module.set_attn_implementation(attention.register())
            done = attention.NAME
    return done


def _load(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _once(message: str) -> None:
    log.warning(message)


@functools.cache
def transformers_unsupported() -> str | None:
    """Why the installed transformers is outside the range the fast paths are tested on
    (pyproject's `accel` extra), or None when it is inside."""
    from importlib import metadata

    from packaging.requirements import Requirement

    installed = metadata.version("transformers")
    try:
        requires = metadata.requires("rayrec") or []
    except metadata.PackageNotFoundError:
        return f"rayrec's package metadata is missing, so transformers {installed} cannot be checked"
    for text in requires:
        req = Requirement(text)
        if req.name == "transformers" and req.marker is not None and req.marker.evaluate({"extra": "accel"}):
            if req.specifier.contains(installed, prereleases=True):
                return None
            return f"transformers {installed} is outside the tested range {req.specifier}"
    return f"transformers {installed}: no tested range declared"
