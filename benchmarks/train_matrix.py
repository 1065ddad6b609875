"""Every body and masking scheme, through the CLI a user runs, beside its peer (issue 16).

The data is rayrec's own pipeline: `rayrec synth --events N --days 2 --items 20000
--seed 7`, then `rayrec etl` with the default workflow. Each row trains one epoch on
day 1 with `rayrec train` (default threading, batch 256, max length 20, 2 layers, 4 heads,
lr 1e-3) and is evaluated on day 2's valid split. The peer trains the same day-1 parquet
with the same sizes, lr, threads and epoch, and is evaluated on the same file:
Transformers4Rec 23.12 (../shared/peers/t4r/bench.py, its own venv) for the bodies it has,
and a plain HF / plain torch loop (benchmarks/plain_loops.py) for Llama and GRU. Each
side keeps its peer's learning-rate schedule: T4R's HF Trainer decays linearly to 0 over
the epoch, as rayrec does by default; the plain loops hold lr constant, as a hand-written
loop does, so their rows train rayrec with `train.schedule: constant` too.

ELECTRA runs twice. Transformers4Rec 23.12's "rtd" masking never calls its
`get_fake_tokens`, so it trains plain MLM on the ELECTRA body; rayrec's rtd does the whole
scheme (generator sampling, a second pass over the corrupted session, the discriminator).
The electra-mlm row is the like-for-like comparison of the same work.

Timing: both sides count their whole training epoch, first steps included, with the data
already read (T4R's figure includes its streaming data loader). Each runs in its own
process, one after the other, never side by side.

The step floor of a row is rayrec's model's step (forward, backward, AdamW, counted by
torch's FlopCounterMode on a real batch, dropout on) over the matmul rate measured here in
the precision the run trained in (`train.precision: auto` picks bf16 on AMX CPUs), plus 8
passes over the step's [predicted positions x catalogue] fp32 logits over the measured
bandwidth (benchmarks/model_step.py's accounting). "fraction of step floor" is
that floor over the measured seconds per step.

    python benchmarks/train_matrix.py [--events 400000] [--rows gpt2-clm-192,llama-clm-64]
        [--work DIR] [--no-peer] [--profile]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from peers import run_t4r  # noqa: E402

BODIES = [("xlnet", "mlm"), ("xlnet", "clm"), ("gpt2", "clm"), ("electra", "rtd"), ("electra", "mlm"),
          ("albert", "mlm"),
          ("longformer", "mlm"), ("llama", "clm"), ("gru", "clm")]
PLAIN = {"llama", "gru"}
SIZES = (64, 192)
BATCH, MAX_LEN, LR, LAYERS, HEADS = 256, 20, 1e-3, 2, 4


def rayrec_cli(*args: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "rayrec")
    out = subprocess.run([exe, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"rayrec {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def prepare(work: str, events: int, items: int = 20_000) -> tuple[str, dict]:
    """The synthetic events and their ETL output (reused when already in `work`)."""
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "schema.json")):
        rayrec_cli("synth", "--events", str(events), "--days", "2", "--items", str(items), "--seed", "7",
                   "--no-ceiling", "--out", os.path.join(work, "raw"))
        rayrec_cli("etl", "--input", os.path.join(work, "raw", "events.parquet"), "--out", data)
    schema = json.load(open(os.path.join(data, "schema.json")))
    item = next(c for c in schema["columns"] if "item_id" in c["tags"])
    return data, item


def train_rayrec(data: str, run: str, arch: str, masking: str, d: int, *extra: str) -> dict:
    stdout = rayrec_cli("train", "--data", data, "--out", run, "--overwrite", *extra, "--arch", arch,
                        "--masking", masking,
                        "--d-model", str(d), "--n-layer", str(LAYERS), "--n-head", str(HEADS),
                        "--max-len", str(MAX_LEN), "--batch-size", str(BATCH), "--epochs", "1", "--lr", str(LR),
                        "--workers", "0", "--train-days", "1:1")
    day = json.load(open(os.path.join(run, "metrics.json")))["days"][0]
    line = next((line for line in stdout.splitlines() if "torch thread" in line), "")
    threads = line.split(" on ")[1].split()[0] if line else "?"
    return {"seq_s": day["sequences_per_s"], "ndcg": day["ndcg@20"], "seconds": day["train_seconds"],
            "threads": threads, "precision": "bf16" if "bf16" in line else "fp32"}


def train_peer(data: str, item: dict, arch: str, masking: str, d: int, threads: int, work: str) -> dict | None:
    train, valid = os.path.join(data, "1", "train.parquet"), os.path.join(data, "2", "valid.parquet")
    sizes = ["--d-model", str(d), "--n-layer", str(LAYERS), "--n-head", str(HEADS), "--max-len", str(MAX_LEN),
             "--lr", str(LR), "--threads", str(threads)]
    if arch in PLAIN:
        out = subprocess.run([sys.executable, os.path.join(HERE, "plain_loops.py"), "--arch", arch, "--train", train,
                              "--valid", valid, "--item-col", item["name"], "--items", str(item["domain_max"] + 1),
                              "--batch", str(BATCH), *sizes], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:])
            return None
        result = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        result = run_t4r(work, ["--item-col", item["name"], "--item-cardinality", str(item["domain_max"]),
                                "--arch", arch, "--masking", masking, "--batch", str(BATCH), "--epochs", "1", *sizes],
                         train=train, valid=valid)
        if result is None:
            return None
        result["system"] = "T4R"
    return {"system": result["system"], "seq_s": result["train_sequences_per_s"], "ndcg": result["ndcg@20"]}


def trained(data: str, run: str, batches: int):
    """The run's trained model (train mode), the first `batches` batches of day 1 and a
    fused AdamW over the model: what the floor and the profile measure a step on."""
    import numpy as np
    import torch

    from rayrec.models.batch import take, to_tensors
    from rayrec.accelerated import load_model
    from rayrec.train.data import load_batch

    model = load_model(os.path.join(run, "checkpoint")).train()
    full = load_batch(os.path.join(data, "1", "train.parquet"), model.features, [], model.cfg.max_len)
    cut = [to_tensors(take(full, np.arange(i * BATCH, (i + 1) * BATCH))) for i in range(batches)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, fused=True)
    return model, cut, opt


def step_floor(data: str, run: str, flops: float, bandwidth: float) -> float:
    """Seconds of the floor of one training step of the run's model, on day 1's first batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, (batch,), opt = trained(data, run, 1)
    counter = FlopCounterMode(display=False)
    torch.manual_seed(0)
    with counter:
        loss = model(batch)
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    with torch.no_grad():
        masked = model.objective(batch)[0]
        rows = int((masked.targets >= model.first_item).sum())
    return counter.get_total_flops() / flops + 8 * rows * model.n_items * 4 / bandwidth


def profile_step(data: str, run: str, precision: str, steps: int = 5) -> dict[str, float]:
    """Where one training step of the run's model goes, by torch op group, under the
    precision it trained in (benchmarks/model_step.py's grouping), over `steps` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from model_step import where_time_goes

    model, batches, opt = trained(data, run, steps + 3)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:3]:
        step(b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[3:]:
            step(b)
    return where_time_goes(prof)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--rows", help="comma-separated ARCH-MASKING-D (default: the whole matrix)")
    p.add_argument("--work", help="keep data and runs here (default: a temporary directory)")
    p.add_argument("--no-peer", action="store_true", help="rayrec only")
    p.add_argument("--profile", action="store_true",
                   help="after the table, profile each row's training step (a second, quiet pass)")
    a = p.parse_args()
    rows = [(arch, m, d) for arch, m in BODIES for d in SIZES]
    if a.rows:
        wanted = set(a.rows.split(","))
        unknown = wanted - {f"{arch}-{m}-{d}" for arch, m, d in rows}
        if unknown:
            p.error(f"--rows: unknown {sorted(unknown)}; expected ARCH-MASKING-D from {[f'{x}-{m}' for x, m in BODIES]}"
                    f" and D in {SIZES}")
        rows = [r for r in rows if f"{r[0]}-{r[1]}-{r[2]}" in wanted]
    work = a.work or tempfile.mkdtemp(prefix="rayrec-matrix-")
    os.makedirs(work, exist_ok=True)
    started = time.perf_counter()
    data, item = prepare(work, a.events)
    import torch
    from model_step import machine_rates
    from rayrec.threads import usable_cores

    threads = usable_cores()
    fp32, bandwidth = machine_rates(threads)
    bf16 = machine_rates(threads, torch.bfloat16)[0]
    matmul = {"fp32": fp32, "bf16": bf16}
    print(f"data: {a.events:,} events -> {data}; catalogue {item['domain_max'] + 1:,} codes; {threads} cores; "
          f"matmul {fp32 / 1e9:.0f} GFLOP/s fp32, {bf16 / 1e9:.0f} bf16; copy {bandwidth / 1e9:.1f} GB/s", flush=True)
    results = []
    header = ("| body | masking | d_model | precision | rayrec seq/s | peer | peer seq/s | ratio | rayrec NDCG@20 "
              "| peer NDCG@20 | fraction of step floor |")
    constant = os.path.join(work, "constant-lr.yaml")  # the plain loops' schedule
    with open(constant, "w") as f:
        f.write("train:\n  schedule: constant\n")
    for arch, masking, d in rows:
        run = os.path.join(work, "runs", f"{arch}-{masking}-{d}")
        ours = train_rayrec(data, run, arch, masking, d, *(["--config", constant] if arch in PLAIN else []))
        floor = step_floor(data, run, matmul[ours["precision"]], bandwidth)
        peer = None if a.no_peer else train_peer(data, item, arch, masking, d, threads, work)
        row = {"body": arch, "masking": masking, "d_model": d, "rayrec_seq_s": ours["seq_s"],
               "rayrec_ndcg@20": round(ours["ndcg"], 4), "rayrec_threads": ours["threads"],
               "precision": ours["precision"],
               "floor_fraction": round(floor / (BATCH / ours["seq_s"]), 3),
               "peer": peer and peer["system"], "peer_seq_s": peer and peer["seq_s"],
               "peer_ndcg@20": peer and peer["ndcg"] is not None and round(peer["ndcg"], 4) or None,
               "ratio": peer and round(ours["seq_s"] / peer["seq_s"], 2)}
        results.append(row)
        print(f"{arch}-{masking} d{d}: rayrec {row['rayrec_seq_s']:.0f} seq/s ndcg {row['rayrec_ndcg@20']:.4f} "
              f"({row['floor_fraction']:.0%} of floor); "
              + (f"{row['peer']} {row['peer_seq_s']:.0f} seq/s ndcg {row['peer_ndcg@20']}: {row['ratio']:.2f}x"
                 if peer else "no peer"), flush=True)
    print()
    print(header)
    print("| " + " | ".join(["---"] * 11) + " |")
    for r in results:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"| {r['body']} | {r['masking']} | {r['d_model']} | {r['precision']} | {r['rayrec_seq_s']:.0f} | "
              f"{r['peer'] or '-'} | "
              f"{fmt(r['peer_seq_s'], '.0f')} | {fmt(r['ratio'], '.2f')}{'x' if r['ratio'] else ''} | {r['rayrec_ndcg@20']:.4f} | "
              f"{fmt(r['peer_ndcg@20'], '.4f')} | {r['floor_fraction']:.0%} |")
    if a.profile:
        print()
        for r in results:
            run = os.path.join(work, "runs", f"{r['body']}-{r['masking']}-{r['d_model']}")
            r["profile"] = profile_step(data, run, r["precision"])
            print(f"where the time goes ({r['body']}-{r['masking']} d{r['d_model']}, {r['precision']}): "
                  + ", ".join(f"{g} {v}%" for g, v in r["profile"].items()), flush=True)
    print(json.dumps({"events": a.events, "threads": threads, "seconds": round(time.perf_counter() - started),
                      "rows": results}))


if __name__ == "__main__":
    main()
