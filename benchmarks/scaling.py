"""DDP scaling: 1 vs 2 Ray Train workers on a simulated two-node cluster.

Two Ray nodes of one CPU each on this machine (`ray.cluster_utils.Cluster`), the
reference config (as benchmarks/train.py, same synthetic sessions), one epoch:
1 worker (1 thread, global batch 256) then 2 workers SPREAD across the nodes (1 thread
each, 128 per worker, the same global batch 256), DDP over gloo. Prints sequences/s,
scaling efficiency (2-worker rate / (2 x 1-worker rate)) and the gradient bytes each
rank all-reduces per step.

    python benchmarks/scaling.py --sessions 20000
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
    a = p.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    import train as bench
    from rayrec.models.features import FeatureSpec
    from rayrec.models.session_model import SessionModel

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as work:
            data, _ = bench.write_dataset(work, a.sessions)
            for workers in (1, 2):
                r = bench.rayrec_run(data, os.path.join(work, f"run{workers}"), threads=workers, lr=2e-3,
                                     workers=workers)
                rows.append({"workers": workers, **r})
    finally:
        ray.shutdown()
        cluster.shutdown()
    # what DDP all-reduces each step: every trainable parameter's gradient, dense fp32
    m = SessionModel(bench.reference_model(), [FeatureSpec("item_id-list", "categorical", True, bench.ITEMS,
                                                        "item_id-list", 64, 1),
                                            FeatureSpec("category-list", "categorical", True, bench.CATS,
                                                        "category-list", 64, 1),
                                            FeatureSpec("price-list", "continuous", True)])
    grad_bytes = sum(q.numel() for q in m.parameters() if q.requires_grad) * 4
    one, two = rows[0]["sequences_per_s"], rows[1]["sequences_per_s"]
    print(f"{'workers':>7} {'seq/s':>8} {'NDCG@20':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['sequences_per_s']:>8.1f} {r['ndcg@20']:>8.4f}")
    print(f"efficiency of 2 workers: {two / (2 * one):.0%}; all-reduced per step and rank: "
          f"{grad_bytes / 2**20:.1f} MiB of gradients")
    print(json.dumps({"rows": rows, "efficiency": two / (2 * one), "allreduce_bytes_per_step": grad_bytes}))


if __name__ == "__main__":
    main()
