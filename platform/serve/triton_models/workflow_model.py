"""Triton python model: raw events -> the model's padded features, by the run's fitted
workflow (loaded from JSON and parquet; rayrec's own encoding code, as in-process)."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from rayrec.etl.workflow import Workflow
from rayrec.rundir import workflow_of
from rayrec.serve.encoding import ModelInput, encode_session, pad_rows


def value(x):
    """A tensor element as the event's JSON value: an empty string or a NaN is a missing
    value (null), as the client writes one."""
    if isinstance(x, bytes):
        return x.decode("utf-8") if x else None
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and x != x else x


def time_value(x):
    """A time arrives as text: a number written as text is the number the client sent."""
    text = value(x)
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "rayrec.json")) as f:
            meta = json.load(f)
        self.workflow = Workflow.load(workflow_of(here))
        self.features = [ModelInput(**f) for f in meta["features"]]
        self.items = [f for f in self.features if f.name == meta["item_col"]]
        self.fields, self.item_col, self.max_len = meta["fields"], meta["item_col"], meta["max_len"]
        self.max_events = meta["max_events"]
        self.convert = {f: time_value if f == meta["time_field"] else value for f in self.fields}

    def sessions(self, request) -> list[list[dict]]:
        lengths = pb_utils.get_input_tensor_by_name(request, "lengths").as_numpy().reshape(-1)
        columns = {f: pb_utils.get_input_tensor_by_name(request, f).as_numpy() for f in self.fields}
        out = []
        for row, n in enumerate(lengths.tolist()):
            for f, col in columns.items():
                if n > self.max_events:
                    raise ValueError(f"session {row}: {n} events; the limit is {self.max_events}")
                if col.ndim != 2 or col.shape[0] != len(lengths) or not 0 < n <= col.shape[1]:
                    raise ValueError(f"session {row}: lengths says {n} events, but {f!r} has shape "
                                     f"{list(col.shape)}; expected [sessions, events] with 1 <= length <= events")
            out.append([{f: self.convert[f](col[row, j]) for f, col in columns.items()} for j in range(n)])
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                rows = [encode_session(self.workflow, self.features, self.item_col, events)
                        for events in self.sessions(request)]
                batch = pad_rows(self.features, rows, self.max_len)
                seen = pad_rows(self.items, rows, self.max_events)[self.item_col]   # all of each session's items
                tensors = [pb_utils.Tensor(f.name, batch[f.name] if f.is_list else batch[f.name].reshape(-1, 1))
                           for f in self.features] + [pb_utils.Tensor("seen", seen)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:   # a bad request is that request's error, never the server's
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"events: {e}")))
        return responses
