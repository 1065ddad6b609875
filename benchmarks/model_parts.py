"""Two hot parts of a training step, each next to the implementation it replaces, same run.

- XLNet body (2 layers, 4 heads, length 20, batch 256, dropout 0.3 drawn with rayrec's
  cheap mask in both): HF's `XLNetModel` forward against rayrec's batch-major
  `FastXLNetModel` (same parameters), forward + backward in training, forward in eval.
- Catalogue loss (484 predicted positions x 19,998 items, d 64: the reference config's):
  torch's `cross_entropy(linear(h, w, b))` against rayrec's `linear_cross_entropy`.

Rounds alternate between the two so that the machine's drift hits both; the table gives
the median of --rounds rounds.

    python benchmarks/model_parts.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def xlnet_pair(d_model: int):
    from transformers import XLNetConfig, XLNetModel

    from rayrec.accel import apply
    from rayrec.models.config import ModelConfig

    cfg = XLNetConfig(vocab_size=1, d_model=d_model, n_layer=2, n_head=4, d_inner=4 * d_model, dropout=0.3,
                      attn_type="bi", mem_len=None, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = XLNetModel(cfg)
    fast = XLNetModel(cfg)
    fast.load_state_dict(hf.state_dict())
    apply(hf, ModelConfig())
    hf.__class__ = XLNetModel   # HF's own forward, with the same (accel's) dropout as the fast one
    apply(fast, ModelConfig())
    return hf, fast


def body_cases(d_model: int, batch: int = 256, length: int = 20):
    x = torch.randn(batch, length, d_model, requires_grad=True)
    attend = (torch.arange(length)[None] < torch.randint(2, length + 1, (batch, 1))).float()
    hf, fast = xlnet_pair(d_model)

    def train(model):
        model.train()
        return lambda: model(inputs_embeds=x, attention_mask=attend).last_hidden_state.sum().backward()

    def serve(model):
        model.eval()

        def run():
            with torch.no_grad():
                model(inputs_embeds=x, attention_mask=attend)
        return run

    return [(f"XLNet d{d_model} train fwd+bwd", train(hf), train(fast)),
            (f"XLNet d{d_model} eval fwd", serve(hf), serve(fast))]


def loss_case(n: int = 484, items: int = 19_998, d: int = 64):
    from rayrec.accel.losses import linear_cross_entropy

    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(items, d) * 0.1).requires_grad_()
    b = torch.zeros(items, requires_grad=True)
    y = torch.randint(0, items, (n,))
    return ("catalogue loss fwd+bwd", lambda: F.cross_entropy(F.linear(h, w, b), y).backward(),
            lambda: linear_cross_entropy(h, w, b, y, 0.0).backward())


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from rayrec.train.allocator import keep_freed_memory
    keep_freed_memory()
    cases = body_cases(64) + body_cases(192) + [loss_case()]
    print(f"{'part':<28} {'replaced ms':>11} {'rayrec ms':>10} {'speed-up':>8}")
    for name, old, new in cases:
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(a.rounds):
            times["old"].append(timed(old, a.reps))
            times["new"].append(timed(new, a.reps))
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{name:<28} {o:>11.2f} {n:>10.2f} {o / n:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
