"""DDP scaling: 1 vs 2 Ray Train workers on a simulated two-node cluster.

Two Ray nodes of one CPU each on this machine (`ray.cluster_utils.Cluster`), the
reference config (as benchmarks/train.py, same synthetic sessions), one epoch:
1 worker (1 thread, global batch 256) then 2 workers SPREAD across the nodes (1 thread
each, 128 per worker, the same global batch 256), DDP over gloo. Prints sequences/s,
scaling efficiency (2-worker rate / (2 x 1-worker rate)) and the gradient bytes each
rank exchanges per step.

With a large catalogue and sampled softmax it also runs 2 workers with the catalogue
tables' gradients exchanged as touched rows (train.embedding_sync: sparse) instead of
DDP's dense all-reduce (the sessions use 20,000 of the catalogue's codes; negatives are
drawn from all of it).

    python benchmarks/scaling.py --sessions 20000
    python benchmarks/scaling.py --sessions 10000 --catalogue 1000000 --loss sampled
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20_000)
    p.add_argument("--catalogue", type=int, default=20_000, help="item vocabulary size in the schema")
    p.add_argument("--loss", choices=["full", "sampled"], default="full")
    p.add_argument("--negatives", type=int, default=1000, help="sampled softmax: log-uniform negatives")
    a = p.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    import train as bench
    from rayrec.models.features import FeatureSpec
    from rayrec.models.session_model import SessionModel
    from rayrec.train.sparse_sync import catalogue_parameters, dense_bytes

    model = bench.reference_model(loss=a.loss, sampled_negatives=a.negatives)
    # what DDP all-reduces each step: every trainable parameter's gradient, dense fp32
    m = SessionModel(model, [FeatureSpec("item_id-list", "categorical", True, a.catalogue, "item_id-list", 64, 1),
                             FeatureSpec("category-list", "categorical", True, bench.CATS, "category-list", 64, 1),
                             FeatureSpec("price-list", "continuous", True)])
    grad_bytes = dense_bytes([q for q in m.parameters() if q.requires_grad])
    catalogue_bytes = dense_bytes(list(catalogue_parameters(m, a.catalogue).values()))
    del m
    runs = [(1, "dense"), (2, "dense")] + ([(2, "sparse")] if a.loss == "sampled" else [])

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as work:
            data, _ = bench.write_dataset(work, a.sessions, catalogue=a.catalogue)
            for workers, sync in runs:
                r = bench.rayrec_run(data, os.path.join(work, f"run{workers}{sync}"), threads=workers, lr=2e-3,
                                     workers=workers, model=model, embedding_sync=sync)
                sent = r.get("sparse_sync_mib_per_step")
                mib = (grad_bytes - catalogue_bytes) / 2**20 + sent if sent is not None else grad_bytes / 2**20
                rows.append({"workers": workers, "sync": sync, "mib_per_step": round(mib, 2) if workers > 1 else 0,
                             **r})
    finally:
        ray.shutdown()
        cluster.shutdown()
    one = rows[0]["sequences_per_s"]
    print(f"catalogue {a.catalogue:,} items, {a.loss} softmax; dense gradients {grad_bytes / 2**20:.1f} MiB "
          f"per step and rank, of which the catalogue tables {catalogue_bytes / 2**20:.1f} MiB")
    print(f"{'workers':>7} {'sync':>6} {'seq/s':>8} {'MiB/step':>9} {'efficiency':>10} {'NDCG@20':>8}")
    for r in rows:
        r["efficiency"] = round(r["sequences_per_s"] / (r["workers"] * one), 3)
        print(f"{r['workers']:>7} {r['sync']:>6} {r['sequences_per_s']:>8.1f} {r['mib_per_step']:>9.2f} "
              f"{r['efficiency']:>10.0%} {r['ndcg@20']:>8.4f}")
    print(json.dumps({"catalogue": a.catalogue, "loss": a.loss, "rows": rows,
                      "dense_bytes_per_step": grad_bytes, "catalogue_bytes_per_step": catalogue_bytes}))


if __name__ == "__main__":
    main()
