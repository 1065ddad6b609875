"""Sparse exchange of catalogue-sized gradients: the same sums as DDP's dense all-reduce,
on a real two-process gloo group, and in a real two-worker Ray Train run."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_data import N_ITEMS, model, sessions, tensors
from rayrec.train.sparse_sync import SparseRowSync, catalogue_parameters, dense_bytes


def compare_with_dense(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    m = model(arch="gpt2", loss="sampled", sampled_negatives=6, features=["category", "price"])
    tables = catalogue_parameters(m, N_ITEMS)
    torch.manual_seed(rank)  # each rank its own sessions and negatives
    m(tensors(sessions(16, seed=rank))).backward()
    dense = {}
    for name, p in tables.items():
        g = p.grad.clone()
        dist.all_reduce(g)
        dense[name] = g / world
    sync = SparseRowSync(list(tables.values()))
    sync()
    worst = max((p.grad - dense[n]).abs().max().item() for n, p in tables.items())
    touched = [int(p.grad.view(p.shape[0], -1).ne(0).any(dim=1).sum()) for p in tables.values()]
    if rank == 0:
        np.save(out, np.array([worst, sync.bytes_per_step(), dense_bytes(list(tables.values())), *touched]))
    dist.destroy_process_group()


def test_sparse_rows_sum_to_the_dense_all_reduce(tmp_path):
    out = str(tmp_path / "result.npy")
    mp.spawn(compare_with_dense, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    worst, sent, dense, *touched = np.load(out)
    assert worst < 1e-7                    # the same gradient as DDP would leave
    assert sent < dense                    # and fewer bytes than the dense tables
    assert all(0 < t < N_ITEMS for t in touched)


def test_a_sampled_softmax_run_syncs_rows_and_keeps_replicas_identical(etl_dir, tmp_path):
    import ray

    from rayrec.models.config import ModelConfig
    from rayrec.raylocal import init_ray
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    mcfg = ModelConfig(arch="gpt2", masking="clm", d_model=32, n_head=2, n_layer=1, loss="sampled",
                       sampled_negatives=32)
    init_ray(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    try:
        runs = {mode: run_training(etl_dir, str(tmp_path / mode), mcfg,
                                   TrainConfig(workers=2, epochs=1, batch_size=64, train_days="1:1", seed=2,
                                               embedding_sync=mode))["days"][0] for mode in ("sparse", "dense")}
    finally:
        ray.shutdown()
    sparse, dense = runs["sparse"], runs["dense"]
    assert sparse["replicas_in_sync"] == 1 and dense["replicas_in_sync"] == 1
    assert 0 < sparse["sparse_sync_mib_per_step"] and "sparse_sync_mib_per_step" not in dense
    # the same training up to the order of float additions
    assert sparse["train_loss"] == pytest.approx(dense["train_loss"], rel=1e-4)
    assert sparse["recall@20"] == pytest.approx(dense["recall@20"], abs=0.01)
