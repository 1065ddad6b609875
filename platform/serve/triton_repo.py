"""`rayrec export triton`: a run as a Triton Inference Server model repository.

Three models and the ensemble that chains them, so that a client sends raw events and `k`
and gets raw item ids back, as from `Recommender.recommend`:

  <name>_workflow  python backend: raw events -> the model's padded features. It runs the
                   run's fitted workflow online (rayrec.serve.encoding, the Recommender's
                   own code), read from its JSON and parquet: nothing is pickled, and no
                   code comes from the run directory.
  <name>_model     the ONNX top-k graph (`exclude_seen` an input, the top `max_k` out), on
                   Triton's onnxruntime backend, or (`model_backend="python"`) a python
                   model that runs the same file with onnxruntime.
  <name>_decode    python backend: item codes -> raw ids, each row cut to its `k`.
  <name>           the ensemble.

The input layout is padded with lengths: one tensor per raw event field, [sessions,
events], and `lengths` [sessions, 1], because Triton batches fixed-rank tensors and a
client builds them from rows at once. The session id field is not an input (a live
session is one session). The repository is written beside OUT and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from rayrec.rundir import RunDir, workflow_of

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_models")
TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT64", "double": "TYPE_FP64", "float": "TYPE_FP64"}


@dataclass
class TritonExport:
    """The options of `rayrec export triton`."""
    name: str = "rayrec"
    max_k: int = 100               # the largest k a request may ask for
    max_events: int = 1000         # events per session (as `serve.max_events`); more are refused
    max_batch: int = 64            # Triton's max_batch_size of every model
    model_backend: str = "onnxruntime"   # onnxruntime (Triton's native backend) | python
    instances: int = 1             # instances of each model (instance_group count)

    def __post_init__(self):
        if self.model_backend not in ("onnxruntime", "python"):
            raise ValueError(f"--model-backend must be onnxruntime or python, got {self.model_backend!r}")
        for field in ("max_k", "max_events", "max_batch", "instances"):
            if getattr(self, field) < 1:
                raise ValueError(f"--{field.replace('_', '-')} must be >= 1, got {getattr(self, field)}")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"--name must be letters, digits, - or _, got {self.name!r}")


def raw_inputs(rec) -> list[tuple[str, str]]:
    """(field, Triton type) of each raw event field a request carries."""
    wf = rec.workflow
    out = []
    for c in wf.raw_columns():
        if c == wf.input.session:
            continue
        kind = "string" if c == wf.input.time else (wf.input_types or {}).get(c, "string")
        out.append((c, TYPES.get(kind, "TYPE_STRING")))   # times come as text or numbers: BYTES takes both
    return out


def model_names(name: str) -> list[str]:
    """The repository's models, in the order they load (the ensemble last)."""
    return [f"{name}_workflow", f"{name}_model", f"{name}_decode", name]


def export_triton(run_dir: str, out: str, opts: TritonExport) -> str:
    """Write the repository for `run_dir` at `out` (which must not exist)."""
    from rayrec.models.export import export_onnx_for_requests
    from rayrec.serve.predictor import Recommender

    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; the export writes a new repository")
    rec = Recommender(run_dir)       # refuses a run without a workflow or with another catalogue
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}-", dir=parent)
    try:
        write_repository(rec, run_dir, tmp, opts, export_onnx_for_requests)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_repository(rec, run_dir: str, root: str, opts: TritonExport, export_onnx) -> None:
    n, L = opts.name, rec.model.cfg.max_len
    width = min(opts.max_k, rec.catalogue_size)
    features = rec.features      # the Recommender's own specs: the server encodes as it does
    fields = raw_inputs(rec)
    id_type = "TYPE_INT64" if rec.encoder.value_type(rec.vocab).startswith("int") else "TYPE_STRING"
    meta = {"item_col": rec.item_col, "vocab": rec.vocab, "max_len": L, "max_k": opts.max_k,
            "max_events": opts.max_events,
            "version": rec.version, "time_field": rec.workflow.input.time, "fields": [f for f, _ in fields], "features": [f.to_dict() for f in features]}

    def feature_io() -> list[str]:   # the model's inputs, and `seen`: every item of the session
        return [tensor(f.name, "TYPE_INT64" if f.categorical else "TYPE_FP32", [L] if f.is_list else [1],
                       reshape=None if f.is_list else []) for f in features] + \
            [tensor("seen", "TYPE_INT64", [opts.max_events])]

    event_inputs = [tensor(f, t, [-1], ragged=True) for f, t in fields] + [tensor("lengths", "TYPE_INT32", [1])]
    common = dict(max_batch=opts.max_batch, instances=opts.instances)

    version = python_model(root, f"{n}_workflow", "workflow_model.py", meta,
                           config(f"{n}_workflow", "python", event_inputs, feature_io(), **common))
    shutil.copytree(RunDir(run_dir).workflow, workflow_of(version))

    exclude = tensor("exclude_seen", "TYPE_BOOL", [1], reshape=[])
    model_io = (feature_io() + [exclude],
                [tensor("item_codes", "TYPE_INT64", [width]), tensor("scores", "TYPE_FP32", [width])])
    if opts.model_backend == "onnxruntime":
        version = os.path.join(root, f"{n}_model", "1")
        os.makedirs(version)
        write(os.path.join(root, f"{n}_model", "config.pbtxt"), config(f"{n}_model", "onnxruntime", *model_io, **common))
    else:
        version = python_model(root, f"{n}_model", "onnx_model.py", meta,
                               config(f"{n}_model", "python", *model_io, **common))
    export_onnx(rec.model, os.path.join(version, "model.onnx"), opts.max_k)

    decode_io = ([tensor("item_codes", "TYPE_INT64", [width]), tensor("scores", "TYPE_FP32", [width]),
                  tensor("k", "TYPE_INT32", [1])],
                 [tensor("item_ids", id_type, [-1]), tensor("item_scores", "TYPE_FP32", [-1])])
    version = python_model(root, f"{n}_decode", "decode_model.py", meta, config(f"{n}_decode", "python", *decode_io,
                                                                               **common))
    shutil.copytree(RunDir(run_dir).workflow, workflow_of(version))

    names = [f.name for f in features]
    steps = [step(f"{n}_workflow", [f for f, _ in fields] + ["lengths"], names + ["seen"]),
             step(f"{n}_model", names + ["seen", "exclude_seen"], ["item_codes", "scores"]),
             step(f"{n}_decode", ["item_codes", "scores", "k"], ["item_ids", "item_scores"])]
    inputs = event_inputs + [tensor("k", "TYPE_INT32", [1]), tensor("exclude_seen", "TYPE_BOOL", [1])]
    os.makedirs(os.path.join(root, n, "1"))     # an ensemble still needs its (empty) version folder
    write(os.path.join(root, n, "config.pbtxt"),
          f'name: "{n}"\nplatform: "ensemble"\nmax_batch_size: {opts.max_batch}\n'
          + "input [\n" + ",\n".join(i.replace("  allow_ragged_batch: true\n", "") for i in inputs) + "\n]\n"
          + "output [\n" + ",\n".join(decode_io[1]) + "\n]\n"
          + "ensemble_scheduling {\n" + "".join(steps) + "}\n")
    write(os.path.join(root, "README.md"), readme(n, meta, fields, opts))


def tensor(name: str, dtype: str, dims: list[int], reshape: list[int] | None = None, ragged: bool = False) -> str:
    text = f'  {{\n  name: "{name}"\n  data_type: {dtype}\n  dims: {dims}\n'
    if reshape is not None:
        text += f"  reshape: {{ shape: {reshape} }}\n"
    if ragged:   # python models take each request's tensors as sent: sessions of any length batch together
        text += "  allow_ragged_batch: true\n"
    return text + "  }"


def config(name: str, backend: str, inputs: list[str], outputs: list[str], max_batch: int, instances: int) -> str:
    return (f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {max_batch}\n'
            + "input [\n" + ",\n".join(inputs) + "\n]\n" + "output [\n" + ",\n".join(outputs) + "\n]\n"
            + "dynamic_batching { }\n"
            + f"instance_group [ {{ count: {instances}\n  kind: KIND_CPU }} ]\n")


def step(model: str, inputs: list[str], outputs: list[str]) -> str:
    maps = "".join(f'    input_map {{ key: "{t}"\n      value: "{t}" }}\n' for t in inputs)
    maps += "".join(f'    output_map {{ key: "{t}"\n      value: "{t}" }}\n' for t in outputs)
    return f'  step [ {{\n    model_name: "{model}"\n    model_version: -1\n{maps}  }} ]\n'


def python_model(root: str, name: str, template: str, meta: dict, cfg: str) -> str:
    version = os.path.join(root, name, "1")
    os.makedirs(version)
    shutil.copyfile(os.path.join(TEMPLATES, template), os.path.join(version, "model.py"))
    write(os.path.join(version, "rayrec.json"), json.dumps(meta, indent=1))
    write(os.path.join(root, name, "config.pbtxt"), cfg)
    return version


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def readme(n: str, meta: dict, fields: list, opts: TritonExport) -> str:
    inputs = "\n".join(f"- `{f}` {t.replace('TYPE_', '')} [sessions, events]" for f, t in fields)
    return f"""# Triton model repository: {meta['version']}

Written by `rayrec export triton`. Send raw events to the ensemble `{n}`; it answers raw item
ids and scores, as `rayrec serve` does.

Inputs (one row per session, padded to the longest session of the request):
{inputs}
- `lengths` INT32 [sessions, 1]: the events of each row
- `k` INT32 [sessions, 1]: items to return, 1..{opts.max_k}
- `exclude_seen` BOOL [sessions, 1]: never return an item of the session

Outputs: `item_ids` [sessions, max k] and `item_scores` FP32; a row's entries past its own
`k` (or past the catalogue) have score -inf.

## Serving it

In a stock Triton container (python and onnxruntime backends), with rayrec's encoding
code importable by the python models:

    docker run --rm -p8000:8000 -p8001:8001 -v $PWD:/models nvcr.io/nvidia/tritonserver:24.10-py3 \\
      sh -c "pip install --no-deps rayrec && pip install 'numpy<2' 'pyarrow<22' pandas pyyaml onnxruntime \\
             && tritonserver --model-repository=/models"

The `{n}_model` backend is `{opts.model_backend}`; export with `--model-backend python` for a
server without the onnxruntime backend.

## A client

    from rayrec.serve.triton import TritonRecommender
    rec = TritonRecommender("127.0.0.1:8000", "{n}")          # protocol="grpc" with port 8001
    items, scores = rec.recommend(events, k=10)

or `rayrec query --triton 127.0.0.1:8000 --events session.json --k 10`.
"""
