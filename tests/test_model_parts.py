"""Inputs built from the schema, heads and losses."""
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model_data import N_ITEMS, model, schema, sessions, tensors, train
from rayrec.models.config import ModelConfig
from rayrec.models.features import resolve_features, swap_noise
from rayrec.models.heads import NextItemHead, log_uniform
from rayrec.models.losses import smoothed_cross_entropy


@pytest.mark.parametrize("aggregation", ["concat", "elementwise-sum", "elementwise-sum-item-multi"])
@pytest.mark.parametrize("continuous", ["scalar", "projection", "soft_onehot"])
def test_aggregations_and_continuous_encodings_train(aggregation, continuous):
    cfg = dict(arch="gpt2", masking="clm", features=["category", "price", "segment", "spend"],
               aggregation=aggregation, continuous=continuous)
    if aggregation != "concat" and continuous == "scalar":
        with pytest.raises(ValueError, match="continuous features need"):
            model(**cfg)
        return
    m = model(**cfg)
    first, last = train(m, steps=30, lr=1e-2)
    assert last < 0.5 * first
    assert not [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]


def test_input_mlp_block_trains():
    m = model(features=["category", "price"], input_mlp=[48, 40])
    assert [type(x).__name__ for x in m.inputs.out] == ["Sequential", "ReLU", "Linear"]
    first, last = train(m, steps=30, lr=1e-2)
    assert last < 0.5 * first


def test_features_follow_the_schema():
    specs = resolve_features(schema(), ModelConfig(features=["category", "price", "prev_item", "segment"],
                                                   infer_embedding_dims=True, embedding_dims={"category": 24}))
    by = {s.name: s for s in specs}
    assert [s.name for s in specs] == ["item", "category", "price", "prev_item", "segment"]
    assert by["item"].cardinality == N_ITEMS and by["item"].first_code == 2
    assert by["price"].kind == "continuous" and by["segment"].is_list is False
    assert by["prev_item"].table == "item"  # same vocabulary -> one shared table
    assert by["category"].dim == 24 and by["item"].dim == 8 * math.ceil(2 * N_ITEMS ** 0.25 / 8)
    specs = resolve_features(schema(), ModelConfig(features=["category"], shared_embeddings={"category": "item"}))
    assert specs[1].table == "item" and specs[1].cardinality == N_ITEMS


def test_context_features_broadcast_along_the_sequence():
    m = model(arch="gpt2", features=["segment", "spend"]).eval()
    batch = tensors(sessions(4, seed=1))
    x = m.inputs(batch, 12)
    other = dict(batch, segment=(batch["segment"] % 4) + 1, spend=batch["spend"] + 1)
    y = m.inputs(other, 12)
    assert not torch.allclose(x, y)  # the session-level values reach every position


def test_pretrained_embeddings_load_frozen_from_npy_and_parquet(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(N_ITEMS, 32)).astype(np.float32)
    np.save(tmp_path / "items.npy", vectors)
    m = model(pretrained_embeddings={"item": {"path": str(tmp_path / "items.npy")}})
    assert torch.equal(m.inputs.item_table.weight, torch.from_numpy(vectors))
    assert not m.inputs.item_table.weight.requires_grad
    before = m.inputs.item_table.weight.clone()
    train(m, steps=3)
    assert torch.equal(m.inputs.item_table.weight, before)

    ids = np.array([2, 5, 7])
    pq.write_table(pa.table({"id": ids, "embedding": pa.array(list(vectors[ids]), pa.list_(pa.float32()))}),
                   tmp_path / "items.parquet")
    m = model(pretrained_embeddings={"item": {"path": str(tmp_path / "items.parquet"), "trainable": True}})
    w = m.inputs.item_table.weight
    assert torch.equal(w[ids], torch.from_numpy(vectors[ids])) and w[3].abs().sum() == 0 and w.requires_grad

    np.save(tmp_path / "bad.npy", vectors[:10])
    with pytest.raises(ValueError, match=r"bad.npy: expected an array of shape \(60, 32\)"):
        model(pretrained_embeddings={"item": {"path": str(tmp_path / "bad.npy")}})
    pq.write_table(pa.table({"id": [99], "embedding": pa.array([vectors[0]], pa.list_(pa.float32()))}),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: row 0: id 99"):
        model(pretrained_embeddings={"item": {"path": str(tmp_path / "bad.parquet")}})


def test_swap_noise_keeps_padding_and_batch_values():
    torch.manual_seed(0)
    values = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    real = values != 0
    out = swap_noise(values, real, 0.9)
    assert (out[~real] == 0).all() and set(out[real].tolist()) <= {5, 6, 7, 8, 9}
    assert not torch.equal(out, values)
    m = model(swap_noise=0.2, features=["category"])
    first, last = train(m, steps=30, lr=1e-2)
    assert last < first


@pytest.mark.parametrize("init", ["normal", "truncated_normal", "uniform", "xavier"])
def test_embedding_initialisers(init):
    w = model(embedding_init=init, embedding_init_std=0.05).inputs.item_table.weight
    assert w[0].abs().sum() == 0  # padding row
    if init == "truncated_normal":
        assert w.abs().max() <= 0.1 + 1e-6
    if init == "uniform":
        assert w.abs().max() <= 0.05 + 1e-6


def test_untied_and_projected_output_layers():
    tied = model(features=["category"], embedding_dims={"item": 16}, aggregation="concat")
    assert tied.next_item.item_table is tied.inputs.item_table and tied.next_item.project.out_features == 16
    untied = model(tie_weights=False)
    assert untied.next_item.weight is not None and untied.next_item.weight is not untied.inputs.item_table.weight
    first, last = train(tied, steps=30, lr=1e-2)
    assert last < 0.5 * first


def test_multi_task_heads_learn_alongside_next_item():
    m = model(arch="gpt2", heads=[{"task": "binary", "target": "converted", "summary": "mean", "weight": 1.0},
                                  {"task": "regression", "target": "spend", "summary": "last", "weight": 0.5}])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    seen = []
    for step in range(60):
        loss = m(tensors(sessions(64, seed=step)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(m.loss_parts["converted"])
    assert np.mean(seen[-5:]) < 0.5 * seen[0]  # converted = long session: learnable from the sequence
    preds = m.sequence_predictions(tensors(sessions(8, seed=1)))
    assert set(preds) == {"converted", "spend"} and ((preds["converted"] >= 0) & (preds["converted"] <= 1)).all()


@pytest.mark.parametrize("in_batch,negatives", [(True, 0), (False, 200), (True, 200)])
def test_sampled_softmax_trains(in_batch, negatives):
    m = model(loss="sampled", sampled_in_batch=in_batch, sampled_negatives=negatives, label_smoothing=0.1,
              temperature=0.5)
    first, last = train(m, steps=40, lr=1e-2)
    assert last < 0.6 * first


@pytest.mark.parametrize("in_batch", [True, False])
def test_sampled_softmax_trains_under_bf16_autocast(in_batch):
    """precision auto is bf16 on AMX CPUs: the sampled loss's bf16 logits take the
    accidental hits' -inf and the loss still falls."""
    m = model(loss="sampled", sampled_in_batch=in_batch, sampled_negatives=200)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(tensors(sessions(64, seed=step)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(m.loss_parts["next_item"])
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < 0.6 * losses[0]


def test_full_scores_under_autocast_pad_rows_and_return_the_same_scores():
    """Under bf16 autocast full_scores pads its rows for the matmul (a shape that repeats
    across steps) and gives back exactly the N rows asked for, close to fp32's."""
    head = NextItemHead(ModelConfig(d_model=8, n_head=2), torch.nn.Embedding(50, 8), first_item=2)
    hidden = torch.randn(37, 8)
    want = head.full_scores(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.full_scores(hidden)
    assert got.shape == want.shape == (37, 50) and torch.isinf(got[:, :2]).all()
    assert torch.allclose(got[:, 2:].float(), want[:, 2:], atol=0.05)


def test_sampled_logits_remove_accidental_hits_and_correct_logq():
    cfg = ModelConfig(d_model=8, n_head=2, loss="sampled", sampled_negatives=500, sampled_in_batch=True)
    head = NextItemHead(cfg, torch.nn.Embedding(50, 8), first_item=2)
    targets = torch.tensor([5, 5, 9])
    torch.manual_seed(0)
    logits, labels = head.sampled_logits(torch.randn(3, 8), targets)
    torch.manual_seed(0)
    torch.randn(3, 8)
    negatives = log_uniform(500, 48, "cpu")[0] + 2  # the same draw
    assert labels.tolist() == [0, 1, 2] and logits.shape == (3, 3 + 500)
    assert torch.isinf(logits[0, 1]) and torch.isinf(logits[1, 0])  # the other 5 is not a negative
    hits = negatives[None, :] == targets[:, None]
    assert hits.any() and torch.isinf(logits[:, 3:][hits]).all() and torch.isfinite(logits[:, 3:][~hits]).all()

    ranks, p = log_uniform(400_000, 48, "cpu")
    freq = torch.bincount(ranks, minlength=48).double() / len(ranks)
    expected = torch.log(torch.arange(2, 50.0) / torch.arange(1, 49.0)) / math.log(49)
    assert torch.allclose(freq, expected.double(), atol=0.005)
    assert torch.allclose(p, expected[ranks].float())


def test_label_smoothing_ignores_removed_candidates():
    logits = torch.tensor([[2.0, float("-inf"), 0.5, 0.1]])
    got = smoothed_cross_entropy(logits, torch.tensor([0]), 0.2)
    finite = torch.tensor([[2.0, 0.5, 0.1]])
    want = torch.nn.functional.cross_entropy(finite, torch.tensor([0]), label_smoothing=0.2 * 3 / 3)
    assert torch.isfinite(got) and torch.allclose(got, want)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_normalize_scores_are_cosines_over_the_temperature_and_train(loss):
    """Under `normalize` an item's score is its cosine with the session over the temperature,
    whatever the norms: scaling an item's embedding leaves its score unchanged."""
    m = model(normalize=True, temperature=0.1, loss=loss, sampled_negatives=100)
    head = m.next_item
    hidden = torch.randn(5, m.cfg.d_model)
    with torch.no_grad():
        head.bias.normal_()
        h, w = head.project(hidden), head.item_weight()
        expected = torch.nn.functional.cosine_similarity(h[:, None], w[None], dim=-1) / 0.1 + head.bias / 0.1
        assert torch.allclose(head.scores(hidden), expected, atol=1e-4)
        w[7] *= 25.0
        assert torch.allclose(head.scores(hidden)[:, 7], expected[:, 7], atol=1e-4)
    first, last = train(m, steps=40, lr=1e-2)
    assert last < 0.7 * first
