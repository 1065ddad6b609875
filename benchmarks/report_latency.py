"""What one `ray.train.report` costs a worker: 2 workers, 10 reports in a row.

A synchronous report returns once Ray Train's controller has collected it, and the
controller polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s; rayrec sets
0.25 s). Rank 0 attaches a 100 kB checkpoint with --checkpoint.

    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2 python benchmarks/report_latency.py --checkpoint
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 python benchmarks/report_latency.py --checkpoint
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def worker(cfg: dict) -> None:
    import ray.train
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    t = time.perf_counter()
    for i in range(cfg["reports"]):
        checkpoint = None
        if rank == 0 and cfg["checkpoint"]:
            d = tempfile.mkdtemp()
            with open(os.path.join(d, "weights"), "wb") as f:
                f.write(os.urandom(100_000))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"i": i}, checkpoint=checkpoint)
    ms = (time.perf_counter() - t) / cfg["reports"] * 1000
    dist.barrier()
    if rank == 0:
        with open(cfg["out"], "w") as f:
            json.dump({"ms_per_report": round(ms, 1)}, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", type=int, default=10)
    p.add_argument("--checkpoint", action="store_true")
    a = p.parse_args()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    with tempfile.TemporaryDirectory() as storage:
        cfg = {"reports": a.reports, "checkpoint": a.checkpoint, "out": os.path.join(storage, "out.json")}
        TorchTrainer(worker, train_loop_config=cfg, scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(storage_path=storage)).fit()
        result = json.load(open(cfg["out"]))
    ray.shutdown()
    interval = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2 (Ray's default)")
    print(f"poll interval {interval} s, checkpoint {a.checkpoint}: {result['ms_per_report']} ms per report")
    print(json.dumps({"interval_s": interval, "checkpoint": a.checkpoint, **result}))


if __name__ == "__main__":
    main()
