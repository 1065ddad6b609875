"""TorchScript and ONNX exports of the top-k graph give eager mode's outputs."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_data import MAX_LEN, model, sessions, tensors
from rayrec.models.batch import eval_examples
from rayrec.models.export import export_onnx, export_torchscript

CASES = [
    dict(arch="gpt2", masking="clm"),
    dict(arch="xlnet", masking="mlm", features=["category", "price", "segment"], continuous="soft_onehot"),
    dict(arch="xlnet", masking="plm"),
    dict(arch="bert", masking="clm", features=["category", "spend"], aggregation="concat"),
    dict(arch="llama", masking="rtd", features=["category"], aggregation="elementwise-sum"),
    dict(arch="gru", masking="clm", features=["price"], continuous="projection"),
]


def inputs(m, n):
    data, _ = eval_examples(sessions(n, seed=7), "item", m.list_cols)
    return tuple(torch.from_numpy(data[f.name]) for f in m.features)


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c['arch']}-{c['masking']}")
def test_exports_match_eager(cfg, tmp_path):
    m = model(**cfg).eval()
    eager = m.recommend(dict(zip([f.name for f in m.features], inputs(m, 16))), 10, exclude_seen=True)
    ts = torch.jit.load(export_torchscript(m, str(tmp_path / "model.pt"), k=10, exclude_seen=True))
    onnx = ort.InferenceSession(export_onnx(m, str(tmp_path / "model.onnx"), k=10, exclude_seen=True))
    for n in (1, 16, 33):  # batch sizes other than the traced one
        cols = inputs(m, n)
        codes, scores = m.recommend(dict(zip([f.name for f in m.features], cols)), 10, exclude_seen=True)
        t_codes, t_scores = ts(*cols)
        o_codes, o_scores = onnx.run(None, {f.name: c.numpy() for f, c in zip(m.features, cols)})
        assert torch.equal(t_codes, codes) and torch.allclose(t_scores, scores, atol=1e-5)
        np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-5)
        assert (o_codes == codes.numpy()).mean() > 0.99  # only exact score ties may swap places
        seen = cols[0]
        assert not (codes[:, :, None] == seen[:, None, :]).any()  # exclude_seen held
    assert eager[0].shape == (16, 10)


def test_recommend_in_chunks_equals_full_scores():
    m = model(arch="gpt2", masking="clm").eval()
    data, _ = eval_examples(sessions(20, seed=2), "item", m.list_cols)
    batch = tensors(data)
    full = m.next_item_scores(batch)
    top = torch.topk(full, 5)
    codes, scores = m.recommend(batch, 5, chunk=7)  # many chunks with a ragged tail
    assert torch.allclose(scores, top.values) and torch.equal(codes, top.indices)
    assert (codes >= 2).all()  # padding / OOV are never recommended
    excl_codes, _ = m.recommend(batch, 5, exclude_seen=True, chunk=7)
    assert not (excl_codes[:, :, None] == batch["item"][:, None, :]).any()


def test_long_sessions_keep_their_latest_events():
    m = model(arch="xlnet", masking="mlm").eval()
    long = torch.arange(2, 2 + MAX_LEN + 5)[None, :]  # longer than max_len
    latest = long[:, -(MAX_LEN - 1):]
    assert torch.equal(m.next_item_scores(long), m.next_item_scores(latest))
