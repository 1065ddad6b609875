import numpy as np
import pytest
import torch

from rayrec.models.checkpoint import load_model, save_model
from rayrec.models.config import ModelConfig
from rayrec.models.session_model import SessionModel, left_align_room, mask_mlm
from rayrec.train.data import eval_examples

N_ITEMS = 60
CONFIGS = [("xlnet", "mlm"), ("xlnet", "clm"), ("gpt2", "clm")]


def chain_batch(n=64, length=8, seed=0):
    """Sessions following item -> item+1, so there is something to learn."""
    rng = np.random.default_rng(seed)
    start = rng.integers(2, N_ITEMS - length, size=n)
    items = start[:, None] + np.arange(length)[None, :]
    items = np.pad(items, ((0, 0), (0, 12)))
    return torch.from_numpy(items)


@pytest.mark.parametrize("arch,masking", CONFIGS)
def test_loss_decreases(arch, masking):
    torch.manual_seed(0)
    model = SessionModel(ModelConfig(arch=arch, masking=masking, d_model=32, n_head=2, dropout=0.0), N_ITEMS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batch = chain_batch()
    first = None
    for _ in range(40):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("arch,masking", CONFIGS)
def test_scores_do_not_depend_on_the_target(arch, masking):
    """Evaluation inputs never contain the target: changing it changes no score."""
    torch.manual_seed(0)
    model = SessionModel(ModelConfig(arch=arch, masking=masking, d_model=32, n_head=2), N_ITEMS).eval()
    items = chain_batch(8).numpy()
    inputs, targets = eval_examples(items)
    other = items.copy()
    lengths = (items != 0).sum(1)
    other[np.arange(len(items)), lengths - 1] = 3  # a different last item
    inputs2, targets2 = eval_examples(other)
    assert (targets != targets2).any()
    a = model.next_item_scores(torch.from_numpy(inputs))
    b = model.next_item_scores(torch.from_numpy(inputs2))
    assert torch.equal(a, b)
    assert torch.isinf(a[:, :2]).all()  # padding and OOV are never recommended


def test_mlm_masks_at_least_one_real_position():
    items = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]])
    for _ in range(20):
        m = mask_mlm(items, 0.01)
        assert m[:2].any(1).all() and not m[2].any() and not (m & (items == 0)).any()


def test_full_sequences_make_room_for_the_mask_slot():
    items = torch.arange(2, 22)[None, :]  # 20 items, max_len 20
    out = left_align_room(items, 20, need_slot=True)
    assert out[0, :19].tolist() == list(range(3, 22)) and out[0, 19] == 0


def test_no_parameter_is_left_without_gradient():
    """Unused HF parameters are frozen, so DDP needs no find_unused_parameters."""
    for arch, masking in CONFIGS:
        model = SessionModel(ModelConfig(arch=arch, masking=masking, d_model=32, n_head=2), N_ITEMS)
        model(chain_batch(4)).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (arch, missing)


def test_checkpoint_round_trip(tmp_path):
    model = SessionModel(ModelConfig(arch="gpt2", masking="clm", d_model=32, n_head=2), N_ITEMS).eval()
    save_model(model, str(tmp_path))
    again = load_model(str(tmp_path))
    x = chain_batch(4)
    assert torch.equal(model.next_item_scores(x), again.next_item_scores(x))


def test_config_rejects_gpt2_with_mlm():
    with pytest.raises(ValueError, match="causal"):
        ModelConfig(arch="gpt2", masking="mlm")
