"""Feeding DDP workers: rayrec's row-range shards vs Ray Data's streaming split.

The same parquet file (the reference sessions of benchmarks/train.py, written in row
groups of --row-group rows), the same 2 Ray Train workers (1 CPU each), the same
product: padded int64/float32 tensors of 128 sessions per worker (global batch 256) for
the reference's three list columns, shuffled. Nothing trains; each worker times how long
it takes to receive its whole shard, for two epochs.

- rayrec: each worker reads the row groups of its contiguous row range once
  (`read_shard`), pads them, and each epoch permutes its shard in memory.
- Ray Data: `read_parquet` -> `streaming_split` by Ray Train (`get_dataset_shard`),
  `iter_batches` in pyarrow format with a local shuffle buffer of --buffer rows, padded
  by the same vectorised code. Each epoch streams the file again, as Ray Data does.

Ray gets 2 more CPUs than the machine's 2 for Ray Data's read tasks to run beside the
workers (with exactly 2, the workers hold both and the reads never schedule).

    python benchmarks/loaders.py --sessions 200000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 128  # per worker
COLUMNS = {"item_id-list": "int64", "category-list": "int64", "price-list": "float32"}


def padded(table, max_len: int) -> dict:
    import numpy as np
    import torch

    from rayrec.models.batch import pad_list_column

    return {c: torch.from_numpy(pad_list_column(table.column(c), max_len, getattr(np, t), c))
            for c, t in COLUMNS.items()}


def rayrec_worker(cfg: dict) -> None:
    import ray.train

    from rayrec.models.batch import take
    from rayrec.train.data import read_shard, shard_rows

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t0 = time.perf_counter()
    data = padded(read_shard(cfg["path"], list(COLUMNS), rank, world), cfg["max_len"])
    n = len(data["item_id-list"])
    epochs = []
    for epoch in range(2):
        rows = shard_rows(n, rank, world, seed=epoch)
        for i in range(0, n, BATCH):
            take(data, rows[i:i + BATCH])
        epochs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    report_all(cfg, {"sessions": n, "epoch1_s": epochs[0], "epoch2_s": epochs[1]})


def report_all(cfg: dict, mine: dict) -> None:
    """Rank 0 writes every worker's figures to cfg["out"] (one machine: a local file)."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        with open(cfg["out"], "w") as f:
            json.dump(gathered, f)


def ray_data_worker(cfg: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    epochs, n = [], 0
    for epoch in range(2):
        t0, n = time.perf_counter(), 0
        for table in shard.iter_batches(batch_size=BATCH, batch_format="pyarrow",
                                        local_shuffle_buffer_size=cfg["buffer"], local_shuffle_seed=epoch):
            n += len(padded(table, cfg["max_len"])["item_id-list"])
        epochs.append(time.perf_counter() - t0)
    report_all(cfg, {"sessions": n, "epoch1_s": epochs[0], "epoch2_s": epochs[1]})


def run(fn, cfg: dict, datasets: dict | None) -> dict:
    """Both workers' figures (each reports its own; the slower one sets the pace)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        cfg = dict(cfg, out=os.path.join(storage, "figures.json"))
        TorchTrainer(fn, train_loop_config=cfg, datasets=datasets,
                     scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(storage_path=storage)).fit()
        with open(cfg["out"]) as f:
            seen = json.load(f)
    sessions = sum(m["sessions"] for m in seen)
    return {"sessions": sessions,
            **{f"epoch{e}_sessions_per_s": round(sessions / max(m[f"epoch{e}_s"] for m in seen), 1) for e in (1, 2)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=200_000)
    p.add_argument("--row-group", type=int, default=10_000)
    p.add_argument("--buffer", type=int, default=10_000, help="Ray Data's local shuffle buffer (rows)")
    a = p.parse_args()
    import pyarrow.parquet as pq
    import ray

    import train as bench

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "train.parquet")
            pq.write_table(bench.sessions(a.sessions, 0), path, row_group_size=a.row_group)
            cfg = {"path": path, "max_len": bench.MAX_LEN, "buffer": a.buffer}
            rows.append({"loader": "rayrec row-range shards", **run(rayrec_worker, cfg, None)})
            ds = ray.data.read_parquet(path, columns=list(COLUMNS))
            rows.append({"loader": "Ray Data streaming_split", **run(ray_data_worker, cfg, {"train": ds})})
    finally:
        ray.shutdown()
    print(f"{'loader':<26} {'sessions':>9} {'epoch 1 sess/s':>15} {'epoch 2 sess/s':>15}")
    for r in rows:
        print(f"{r['loader']:<26} {r['sessions']:>9} {r['epoch1_sessions_per_s']:>15.0f} "
              f"{r['epoch2_sessions_per_s']:>15.0f}")
    ratio = {e: rows[0][f"epoch{e}_sessions_per_s"] / rows[1][f"epoch{e}_sessions_per_s"] for e in (1, 2)}
    print(f"rayrec / Ray Data: epoch 1 {ratio[1]:.1f}x, epoch 2 {ratio[2]:.1f}x")
    print(json.dumps({"rows": rows, "ratio_epoch1": ratio[1], "ratio_epoch2": ratio[2]}))


if __name__ == "__main__":
    main()
