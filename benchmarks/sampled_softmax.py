"""Sampled softmax on a catalogue of millions of items, on CPU, in bounded memory.

Trains next-item prediction (GPT-2 body, clm) on synthetic sessions over `--items` items
with the sampled loss (in-batch targets + log-uniform negatives, logQ-corrected) and
prints steps/s, the loss going down, and the process's peak RSS. A full softmax over the
same batch would need [targets x catalogue] logits: that size is printed next to it.

    python benchmarks/sampled_softmax.py --items 1000000 --steps 30
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch



def sessions(rng, pool, n, length):
    """Sessions start at Zipf-popular entries of a pool of items spread over the whole
    catalogue and walk item -> item + 1, so the loss has something to learn in few steps."""
    start = pool[np.minimum(rng.zipf(1.1, size=n), len(pool)) - 1]
    return start[:, None] + np.arange(length)[None, :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--negatives", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's defaults (no keep_freed_memory)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.system_malloc:
        from rayrec.train.allocator import keep_freed_memory
        keep_freed_memory()
    torch.manual_seed(0)

    from rayrec.models.config import ModelConfig
    from rayrec.models.features import FeatureSpec
    from rayrec.models.session_model import SessionModel

    cfg = ModelConfig(arch="gpt2", masking="clm", d_model=a.d_model, n_head=4, max_len=a.max_len, dropout=0.0,
                      loss="sampled", sampled_negatives=a.negatives, sampled_in_batch=True)
    model = SessionModel(cfg, [FeatureSpec("item", "categorical", True, a.items, "item", a.d_model, 2)])
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-3, fused=True)
    rng = np.random.default_rng(0)
    pool = rng.choice(np.arange(2, a.items - a.max_len), size=min(20_000, a.items // 4), replace=False)
    losses, started = [], None
    for step in range(a.steps + 1):
        if step == 1:
            started = time.perf_counter()  # step 0 warms up allocators
        batch = torch.from_numpy(sessions(rng, pool, a.batch, a.max_len))
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    targets = a.batch * (a.max_len - 1)
    result = {"items": a.items, "steps": a.steps, "batch": a.batch, "negatives": a.negatives,
              "steps_per_s": round(a.steps / seconds, 3), "first_loss": round(losses[0], 3),
              "last_loss": round(float(np.mean(losses[-5:])), 3), "peak_rss_gib": round(peak / 2**30, 3),
              "full_softmax_logits_gib": round(targets * a.items * 4 / 2**30, 1)}
    print(f"{'items':>10} {'steps/s':>8} {'loss first':>10} {'loss last':>9} {'peak RSS':>9} {'full logits':>11}")
    print(f"{a.items:>10,} {result['steps_per_s']:>8} {result['first_loss']:>10} {result['last_loss']:>9} "
          f"{result['peak_rss_gib']:>7}Gi {result['full_softmax_logits_gib']:>9}Gi")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
