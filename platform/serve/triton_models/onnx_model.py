"""Triton python model: the exported ONNX top-k graph on onnxruntime, for a server without
Triton's onnxruntime backend. Requests of one batch run as one call."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("RAYREC_ORT_THREADS", "0"))   # 0: onnxruntime's default
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        with open(os.path.join(here, "rayrec.json")) as f:
            self.session_level = {f["name"] for f in json.load(f)["features"] if not f["is_list"]} | {"exclude_seen"}

    def execute(self, requests):
        parts = {n: [] for n in self.names}
        sizes = []
        for request in requests:
            for n in self.names:
                a = pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                parts[n].append(a.reshape(-1) if n in self.session_level else a)
            sizes.append(len(parts[self.names[0]][-1]))
        try:
            codes, scores = self.session.run(None, {n: np.concatenate(v) for n, v in parts.items()})
        except Exception as e:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))) for _ in requests]
        out, start = [], 0
        for size in sizes:
            out.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("item_codes", codes[start:start + size]),
                pb_utils.Tensor("scores", scores[start:start + size])]))
            start += size
        return out
