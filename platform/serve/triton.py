"""A client of an exported Triton repository (`rayrec export triton`): raw events in, raw
item ids out, the same call as the in-process `Recommender.recommend`.

It builds the ensemble's padded inputs from the events (one tensor per raw field, the
types the server's config declares; a missing value is an empty string or a NaN) and trims each answer to its k and its finite
scores, as the Recommender does. HTTP or gRPC, on tritonclient.
"""
from __future__ import annotations

import numpy as np

NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP64": np.float64, "FP32": np.float32, "BOOL": np.bool_,
         "BYTES": np.object_}
CONTROL = ("lengths", "k", "exclude_seen")


class TritonRecommender:
    def __init__(self, url: str, name: str = "rayrec", protocol: str = "http", timeout_s: float = 60.0):
        if protocol == "http":
            import tritonclient.http as client

            self.client = client.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol == "grpc":
            import tritonclient.grpc as client

            self.client = client.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
        self.lib, self.name, self.protocol = client, name, protocol
        meta = self.client.get_model_metadata(name)
        inputs = meta["inputs"] if isinstance(meta, dict) else [{"name": i.name, "datatype": i.datatype}
                                                                 for i in meta.inputs]
        self.fields = {i["name"]: i["datatype"] for i in inputs if i["name"] not in CONTROL}

    def close(self) -> None:
        self.client.close()

    def recommend(self, events: list[dict], k: int = 10, exclude_seen: bool = False) -> tuple[list, list[float]]:
        """Top-k raw item ids and scores for one session's raw events."""
        return self.recommend_many([events], k, exclude_seen)[0]

    def recommend_many(self, sessions: list[list[dict]], k: int | list[int] = 10,
                       exclude_seen: bool | list[bool] = False) -> list[tuple[list, list[float]]]:
        """Many sessions in one request (rows padded to the longest)."""
        n = len(sessions)
        ks = k if isinstance(k, list) else [k] * n
        flags = exclude_seen if isinstance(exclude_seen, list) else [exclude_seen] * n
        width = max((len(s) for s in sessions), default=0)
        arrays = {}
        for field, datatype in self.fields.items():
            rows = [[e.get(field) for e in s] for s in sessions]
            if datatype == "BYTES":
                a = np.full((n, width), b"", dtype=object)
                for i, row in enumerate(rows):
                    a[i, :len(row)] = [str(v).encode() if v is not None else b"" for v in row]
            else:   # a missing value: NaN where the type has one
                a = np.zeros((n, width), dtype=NUMPY[datatype])
                for i, row in enumerate(rows):
                    if any(v is None for v in row):
                        if not datatype.startswith("FP"):
                            raise ValueError(f"events: field {field!r} is missing in session {i}; an "
                                             f"{datatype} field needs a value in every event")
                        row = [np.nan if v is None else v for v in row]
                    a[i, :len(row)] = row
            arrays[field] = a
        arrays["lengths"] = np.array([[len(s)] for s in sessions], dtype=np.int32)
        arrays["k"] = np.array([[v] for v in ks], dtype=np.int32)
        arrays["exclude_seen"] = np.array([[bool(v)] for v in flags], dtype=np.bool_)
        inputs = []
        for name, a in arrays.items():
            datatype = self.fields.get(name) or {"lengths": "INT32", "k": "INT32", "exclude_seen": "BOOL"}[name]
            t = self.lib.InferInput(name, list(a.shape), datatype)
            t.set_data_from_numpy(a)
            inputs.append(t)
        outputs = [self.lib.InferRequestedOutput("item_ids"), self.lib.InferRequestedOutput("item_scores")]
        result = self.client.infer(self.name, inputs, outputs=outputs)
        ids, scores = result.as_numpy("item_ids"), result.as_numpy("item_scores")
        answers = []
        for i in range(n):
            keep = np.isfinite(scores[i])[:ks[i]]
            row = ids[i][:ks[i]][keep].tolist()
            answers.append(([v.decode() if isinstance(v, bytes) else v for v in row],
                            [float(s) for s in scores[i][:ks[i]][keep]]))
        return answers
