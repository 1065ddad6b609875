"""The inference graph, exported: padded feature tensors in -> top-k item codes and scores out.

One input per model feature, in `model.features` order and named after the column:
list features [batch, max_len] right-padded (int64 codes / float32 values), session-level
features [batch]. The batch dimension is dynamic. Sessions longer than the model's room
keep their latest events, as in eager mode. TorchScript is traced; ONNX uses the
TorchScript-based exporter with a dynamic batch axis. These files are what serving loads.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from rayrec.models.session_model import SessionModel


class TopKGraph(nn.Module):
    def __init__(self, model: SessionModel, k: int, exclude_seen: bool = False, chunk: int = 65536):
        super().__init__()
        self.model = model.eval()
        self.names = [f.name for f in model.features]
        self.k, self.exclude_seen, self.chunk = k, exclude_seen, chunk

    def forward(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, scores = self.model.recommend(dict(zip(self.names, columns)), self.k, self.exclude_seen, self.chunk)
        return codes, scores


class RequestTopKGraph(nn.Module):
    """The graph a server runs for requests that choose their own rules: the top `max_k`
    of each session. `seen` [batch, S] holds every item code of the session (0 pads), not
    only the latest max_len the model reads, and `exclude_seen` [batch] bool says whose
    are never returned. A request's smaller k is a slice of these, taken after the graph."""

    def __init__(self, model: SessionModel, max_k: int, chunk: int = 65536):
        super().__init__()
        self.model = model.eval()
        self.names = [f.name for f in model.features]
        self.max_k, self.chunk = max_k, chunk

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *columns, seen, exclude_seen = inputs
        m = self.model
        batch = m.prepare(dict(zip(self.names, columns)))
        banned = seen * exclude_seen.to(torch.int64)[:, None]     # code 0 bans nothing
        scores, codes = m.next_item.topk(m.next_item_hidden(batch), self.max_k, banned, self.chunk)
        return codes, scores


def export_onnx_for_requests(model: SessionModel, path: str, max_k: int, opset: int = 17) -> str:
    """`RequestTopKGraph` as ONNX: inputs the features, `seen` and `exclude_seen`; outputs
    `item_codes` [batch, min(max_k, catalogue)] int64 and `scores` float32, best first."""
    import warnings

    graph = RequestTopKGraph(model, max_k)
    names = graph.names + ["seen", "exclude_seen"]
    example = example_inputs(model)
    example = example + (example[0].clone(), torch.tensor([False, True]))
    dynamic = {n: {0: "batch"} for n in names} | {"seen": {0: "batch", 1: "events"}} | \
        {"item_codes": {0: "batch"}, "scores": {0: "batch"}}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")    # the tracer's notes on shapes that are fixed here by design
            torch.onnx.export(graph, example, tmp, input_names=names, output_names=["item_codes", "scores"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    _atomic(path, write)
    return path


def example_inputs(model: SessionModel, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    """Valid inputs of the graph's shapes and dtypes (a few items per session)."""
    g = torch.Generator().manual_seed(0)
    out = []
    L = model.cfg.max_len
    length = max(1, min(3, L - 1))
    for f in model.features:
        shape = (batch_size, L) if f.is_list else (batch_size,)
        if f.kind == "categorical":
            t = torch.randint(f.first_code, max(f.first_code + 1, f.cardinality), shape, generator=g)
        else:
            t = torch.rand(shape, generator=g)
        if f.is_list:
            t[:, length:] = 0
        out.append(t)
    return tuple(out)


def export_torchscript(model: SessionModel, path: str, k: int, exclude_seen: bool = False) -> str:
    graph = TopKGraph(model, k, exclude_seen)
    with torch.no_grad():
        traced = torch.jit.trace(graph, example_inputs(model), check_trace=False)
    _atomic(path, lambda tmp: traced.save(tmp))
    return path


def export_onnx(model: SessionModel, path: str, k: int, exclude_seen: bool = False, opset: int = 17) -> str:
    graph = TopKGraph(model, k, exclude_seen)
    names = graph.names
    dynamic = {n: {0: "batch"} for n in names} | {"item_ids": {0: "batch"}, "scores": {0: "batch"}}

    def write(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(graph, example_inputs(model), tmp, input_names=names, output_names=["item_ids", "scores"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    _atomic(path, write)
    return path


def _atomic(path: str, write) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)
