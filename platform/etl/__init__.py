"""Raw events -> day-partitioned session parquet, a schema, and a fitted workflow.

Python API: build a `Workflow` from ops (or `workflow_from_config` for YAML), then
`fit`/`transform` in-process, `run_etl` on Dask, `transform_events` online.
"""
from rayrec.etl.config import EtlConfig
from rayrec.etl.inputs import InputError, InputSpec
from rayrec.etl.op import Op, register_function, register_op
from rayrec.etl.pipeline import run_etl
from rayrec.etl.spec import default_workflow, workflow_from_config
from rayrec.etl.workflow import Workflow

__all__ = ["EtlConfig", "InputError", "InputSpec", "Op", "Workflow", "default_workflow", "register_function",
           "register_op", "run_etl", "workflow_from_config"]
