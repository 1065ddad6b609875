"""Every masking scheme on every required body trains, and none of them leaks the target."""
import math

import numpy as np
import pytest
import torch

from model_data import N_ITEMS, model, sessions, tensors, train
from rayrec.metrics import finalize
from rayrec.models.batch import eval_examples
from rayrec.models.config import ModelConfig
from rayrec.train.evaluate import model_metric_sums

ARCHS = ["xlnet", "gpt2", "bert", "electra", "llama", "gru"]
MASKINGS = ["clm", "mlm", "plm", "rtd"]
SIDE = {"features": ["category", "price"], "continuous": "soft_onehot"}


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_scheme_trains_on_every_body(arch, masking):
    m = model(arch=arch, masking=masking, **SIDE)
    first, last = train(m, steps=100, lr=5e-3)
    assert last < 0.9 * first, (first, last)
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing  # DDP needs no find_unused_parameters


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("arch", ["xlnet", "bert", "gpt2", "gru"])
def test_changing_the_target_changes_no_score(arch, masking):
    """Evaluation examples differ only in the target event (its item and every feature
    derived from it): the scores must be identical."""
    m = model(arch=arch, masking=masking, features=["category", "price", "prev_item", "segment"]).eval()
    a = sessions(32, seed=3)
    b = {k: v.copy() for k, v in a.items()}
    last = (a["item"] != 0).sum(1) - 1
    rows = np.arange(len(last))
    b["item"][rows, last] = 2 + (a["item"][rows, last] + 7) % (N_ITEMS - 2)
    b["category"][rows, last] = 2 + (a["category"][rows, last] + 3) % 10
    b["price"][rows, last] += 5.0
    b["prev_item"][rows, last] = 1
    cols = m.list_cols
    (ia, ta), (ib, tb) = eval_examples(a, "item", cols), eval_examples(b, "item", cols)
    assert (ta != tb).all()
    assert torch.equal(m.next_item_scores(tensors(ia)), m.next_item_scores(tensors(ib)))
    for on in ("all",):  # every position as a target: same property for each prefix
        (ia, ta), (ib, tb) = eval_examples(a, "item", cols, on), eval_examples(b, "item", cols, on)
        assert torch.equal(m.next_item_scores(tensors(ia)), m.next_item_scores(tensors(ib)))


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("arch", ARCHS + ["albert", "roberta", "reformer", "mistral"])
def test_training_never_shows_a_target_to_its_own_prediction(arch, masking):
    """Under each scheme's training mask, the hidden state that predicts a target must not
    change when the event holding that target (its item and every side feature) changes."""
    m = model(arch=arch, masking=masking, features=["category", "price", "prev_item"], continuous="projection").eval()
    a = sessions(32, seed=5)
    torch.manual_seed(1)
    masked, hidden = m.objective(tensors(a))
    rows = np.arange(len(a["item"]))
    predicted = (masked.targets > 0).numpy()
    pos = predicted.argmax(1)  # the first predicted position of each row
    source = pos + 1 if masking == "clm" else pos  # where that target's event sits
    b = {k: v.copy() for k, v in a.items()}
    b["item"][rows, source] = 2 + (a["item"][rows, source] + 11) % (N_ITEMS - 2)
    b["category"][rows, source] = 2 + (a["category"][rows, source] + 5) % 10
    b["price"][rows, source] -= 3.0
    b["prev_item"][rows, source] = 1
    torch.manual_seed(1)
    masked_b, hidden_b = m.objective(tensors(b))
    assert torch.equal(masked.targets > 0, masked_b.targets > 0)
    assert torch.allclose(hidden[rows, pos], hidden_b[rows, pos], atol=1e-5)


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("arch", ["xlnet", "bert"])
def test_random_targets_stay_at_chance(arch, masking):
    """Items drawn at random (each one's category, price and previous item derived from
    it): nothing is predictable, so the training loss cannot fall below the entropy and
    evaluation must score at chance. A training leak (an unmasked target feature, a
    bidirectional clm) would drive the loss toward 0; an evaluation leak would lift recall."""
    m = model(arch=arch, masking=masking, features=["category", "price", "prev_item"], continuous="projection")
    _, last = train(m, steps=60, random_items=True, n=128, lr=1e-2)
    entropy = math.log(N_ITEMS - 2)
    assert last > 0.9 * entropy, (last, entropy)
    data = sessions(2000, seed=99, random_items=True)
    got = finalize(model_metric_sums(m, data))
    chance = 10 / (N_ITEMS - 2)
    assert got["recall@10"] < chance + 0.06, (got["recall@10"], chance)


def test_learnable_sessions_are_learned_with_side_features():
    """Positive control for the chance test: the same setup on learnable data scores high."""
    m = model(arch="xlnet", masking="mlm", features=["category", "price", "prev_item"], continuous="projection",
              mlm_probability=0.3)
    train(m, steps=80, n=128, lr=1e-2)
    got = finalize(model_metric_sums(m, sessions(500, seed=98)))
    assert got["recall@10"] > 0.6


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="model.masking"):
        ModelConfig(masking="xyz")
    with pytest.raises(ValueError, match="model.aggregation"):
        ModelConfig(aggregation="max")
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(heads=[{"task": "binary"}])
    with pytest.raises(ValueError, match="neither gru/lstm nor a transformers model type"):
        model(arch="not-a-model")
    with pytest.raises(ValueError, match="cannot be made to attend causally"):
        model(arch="longformer", masking="clm")
    with pytest.raises(ValueError, match="model.features"):
        model(features=["nope"])


def test_every_model_option_is_documented():
    import dataclasses
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "model-config.md")).read()
    missing = [f.name for f in dataclasses.fields(ModelConfig) if f"`{f.name}`" not in doc]
    assert not missing


def test_generator_logits_sampling_draws_each_item_at_its_softmax_probability(kernel_path):
    """ELECTRA's proposals from the generator's logits: each item at its softmax
    probability, never an item at -inf (the codes below the first item), on both paths."""
    from conftest import accelerated

    from rayrec.accel.sampling import FastProposalSampler

    sample_logits = accelerated(FastProposalSampler(), kernel_path)

    torch.manual_seed(0)
    probs = torch.tensor([0.0, 0.1, 0.3, 0.0, 0.6])
    logits = probs.log().repeat(40_000, 1).to(torch.bfloat16)
    logits[1::2] = float("-inf")
    logits[1::2, 4] = 1.0
    drawn = sample_logits(logits).view(20_000, 2)
    first = torch.bincount(drawn[:, 0], minlength=5).double() / 20_000
    assert first[0] == first[3] == 0 and (drawn[:, 1] == 4).all()
    assert torch.allclose(first[[1, 2, 4]], probs[[1, 2, 4]].double(), atol=0.015)


def test_generator_sampling_draws_each_item_at_its_probability():
    """ELECTRA's proposals (inverse-CDF sampling) follow the generator's distribution and
    never pick an item of zero probability (the codes below the first item)."""
    from rayrec.models.masking import sample_rows

    torch.manual_seed(0)
    weights = torch.tensor([[0.0, 1.0, 3.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0, 2.0]]).repeat(50_000, 1)
    drawn = sample_rows(weights).view(50_000, 2)
    first = torch.bincount(drawn[:, 0], minlength=5).double() / 50_000
    assert first[0] == first[3] == 0 and (drawn[:, 1] == 4).all()
    assert torch.allclose(first[[1, 2, 4]], torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.01)
