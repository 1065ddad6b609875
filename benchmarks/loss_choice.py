"""Full softmax or sampled softmax by default? Both losses, through the CLI, on catalogues
of growing size (issue 16).

For each catalogue size: `rayrec synth --events N --days 2 --items K --seed 7`, the
default ETL, then one epoch on day 1 with each body below and `model.loss` full and then
sampled (rayrec's sampled defaults: in-batch targets plus 1,000 log-uniform negatives,
logQ-corrected), evaluated on day 2's valid split by ranking the whole catalogue. Same
sizes as benchmarks/train_matrix.py (batch 256, max length 20, 2 layers, 4 heads,
d_model 64, lr 1e-3, default threading and precision).

    python benchmarks/loss_choice.py [--events 400000] [--items 20000,200000] [--work DIR]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from train_matrix import prepare, train_rayrec  # noqa: E402

ROWS = [("gpt2", "clm"), ("xlnet", "mlm")]
D_MODEL = 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--items", default="20000,200000", help="comma-separated catalogue sizes")
    p.add_argument("--work", help="keep data and runs here (default: a temporary directory)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="rayrec-loss-")
    started, results = time.perf_counter(), []
    for items in (int(k) for k in a.items.split(",")):
        base = os.path.join(work, f"items-{items}")
        os.makedirs(base, exist_ok=True)
        data, item = prepare(base, a.events, items)
        for loss in ("full", "sampled"):
            config = os.path.join(base, f"{loss}.yaml")
            with open(config, "w") as f:
                f.write(f"model:\n  loss: {loss}\n")
            for arch, masking in ROWS:
                run = os.path.join(base, "runs", f"{arch}-{masking}-{loss}")
                ours = train_rayrec(data, run, arch, masking, D_MODEL, "--config", config)
                row = {"items": item["domain_max"] + 1, "body": arch, "masking": masking, "loss": loss,
                       "seq_s": ours["seq_s"], "ndcg@20": round(ours["ndcg"], 4), "precision": ours["precision"]}
                results.append(row)
                print(f"{row['items']:,} items {arch}-{masking} {loss}: {row['seq_s']:.0f} seq/s, "
                      f"NDCG@20 {row['ndcg@20']:.4f}", flush=True)
    print()
    print("| catalogue | body | masking | full seq/s | sampled seq/s | speed-up | full NDCG@20 | sampled NDCG@20 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in (r for r in results if r["loss"] == "full"):
        s = next(x for x in results if x["loss"] == "sampled" and x["items"] == r["items"] and x["body"] == r["body"])
        print(f"| {r['items']:,} | {r['body']} | {r['masking']} | {r['seq_s']:.0f} | {s['seq_s']:.0f} | "
              f"{s['seq_s'] / r['seq_s']:.2f}x | {r['ndcg@20']:.4f} | {s['ndcg@20']:.4f} |")
    print(json.dumps({"events": a.events, "seconds": round(time.perf_counter() - started), "rows": results}))


if __name__ == "__main__":
    main()
