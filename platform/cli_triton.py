"""`rayrec export triton` and `rayrec query`: a run as a Triton repository, and a request
to it from the command line (kept beside cli.py, which they plug into)."""
from __future__ import annotations

import argparse
import json

EXPORT_HELP = """\
Writes a Triton model repository: NAME_workflow (python backend: raw events -> features,
by the run's fitted workflow), NAME_model (the ONNX top-k graph), NAME_decode (codes ->
raw ids) and the ensemble NAME, which takes raw events, k and exclude_seen and answers
raw item ids and scores. REPO/README.md says how to start Triton on it."""


def add_triton_parsers(sub) -> None:
    ex = sub.add_parser("export", help="a trained run as a Triton Inference Server model repository",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=EXPORT_HELP)
    ex.add_argument("target", choices=["triton"], help="what to export to")
    ex.add_argument("--run", required=True, help="run directory of rayrec train")
    ex.add_argument("--out", required=True, help="repository directory to write (must not exist)")
    ex.add_argument("--name", default="rayrec", help="the ensemble's name, and its models' prefix")
    ex.add_argument("--max-k", type=int, default=100, help="the largest k a request may ask for")
    ex.add_argument("--max-events", type=int, default=1000, help="events per session; longer ones are refused")
    ex.add_argument("--max-batch", type=int, default=64, help="Triton's max_batch_size of each model")
    ex.add_argument("--model-backend", default="onnxruntime", choices=["onnxruntime", "python"],
                    help="Triton's native onnxruntime backend, or a python model running onnxruntime "
                         "(for servers without that backend)")
    ex.add_argument("--instances", type=int, default=1, help="instances of each model")
    ex.set_defaults(func=cmd_export)

    q = sub.add_parser("query", help="ask an endpoint for one session's recommendations")
    q.add_argument("--triton", required=True, metavar="URL", help="Triton's address, host:port")
    q.add_argument("--events", required=True, help="a JSON file: the session's events, oldest first")
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--exclude-seen", action="store_true")
    q.add_argument("--name", default="rayrec", help="the ensemble's name")
    q.add_argument("--protocol", default="http", choices=["http", "grpc"])
    q.set_defaults(func=cmd_query)


def cmd_export(a) -> None:
    from rayrec.serve.triton_repo import TritonExport, export_triton

    opts = TritonExport(name=a.name, max_k=a.max_k, max_events=a.max_events, max_batch=a.max_batch,
                        model_backend=a.model_backend, instances=a.instances)
    out = export_triton(a.run, a.out, opts)
    print(f"Triton repository written to {out}: ensemble {a.name!r} ({a.name}_workflow -> {a.name}_model "
          f"[{a.model_backend}] -> {a.name}_decode), k up to {a.max_k}; see {out}/README.md")


def cmd_query(a) -> None:
    from rayrec.serve.triton import TritonRecommender

    try:
        with open(a.events) as f:
            events = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--events {a.events}: {e}") from None
    if isinstance(events, dict) and "events" in events:    # the body of POST /recommend works too
        events = events["events"]
    if not isinstance(events, list) or not events or not all(isinstance(e, dict) for e in events):
        raise ValueError(f"--events {a.events}: expected a JSON list of event objects")
    from tritonclient.utils import InferenceServerException

    try:
        client = TritonRecommender(a.triton, a.name, a.protocol)
        try:
            items, scores = client.recommend(events, a.k, a.exclude_seen)
        finally:
            client.close()
    except (InferenceServerException, OSError) as e:    # the server's own message, without a traceback
        raise ValueError(f"Triton at {a.triton}, model {a.name!r}: {e}") from None
    print(json.dumps({"items": items, "scores": [round(s, 6) for s in scores]}))
