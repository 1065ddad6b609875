"""Triton python model: the top-k item codes -> raw item ids, each row cut to its own k
(O(k) per row: only the returned codes are looked up in the vocabulary)."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from rayrec.etl.workflow import Workflow
from rayrec.rundir import workflow_of


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "rayrec.json")) as f:
            meta = json.load(f)
        self.vocab, self.max_k = meta["vocab"], meta["max_k"]
        self.encoder = Workflow.load(workflow_of(here)).categorify_for(self.vocab)
        self.strings = not self.encoder.value_type(self.vocab).startswith("int")

    def answer(self, request):
        codes = pb_utils.get_input_tensor_by_name(request, "item_codes").as_numpy()
        scores = pb_utils.get_input_tensor_by_name(request, "scores").as_numpy()
        ks = pb_utils.get_input_tensor_by_name(request, "k").as_numpy().reshape(-1)
        if len(ks) != len(codes):
            raise ValueError(f"k: expected one per session ({len(codes)}), got {len(ks)}")
        bad = [int(k) for k in ks if not 1 <= k <= self.max_k]
        if bad:
            raise ValueError(f"k must lie in 1..{self.max_k}, got {bad[0]}")
        width = int(min(ks.max(), codes.shape[1]))
        codes, scores = codes[:, :width], scores[:, :width].copy()
        scores[np.arange(width)[None, :] >= ks[:, None]] = -np.inf     # past a row's own k
        ids = self.encoder.decode(codes.reshape(-1), self.vocab)
        keep = np.isfinite(scores.reshape(-1))
        if self.strings:
            out = np.array([(v if ok and v is not None else "").encode() for v, ok in zip(ids, keep)], dtype=object)
        else:
            out = np.array([v if ok and v is not None else 0 for v, ok in zip(ids, keep)], dtype=np.int64)
        return [pb_utils.Tensor("item_ids", out.reshape(codes.shape)),
                pb_utils.Tensor("item_scores", scores.astype(np.float32))]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self.answer(request)))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
