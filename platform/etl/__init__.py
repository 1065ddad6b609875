"""Raw events -> day-partitioned session parquet, a schema, and a fitted workflow.

Python API: build a `Workflow` from ops (or `workflow_from_config` for YAML), then
`fit`/`transform` in-process, `run_etl` on Dask, `transform_events` online.
"""
import os

# pyarrow warns on every group-by over numpy-backed buffers; alignment is not a correctness issue here
os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "ignore")

from rayrec.etl.config import EtlConfig  # noqa: E402
from rayrec.etl.inputs import InputError, InputSpec  # noqa: E402
from rayrec.etl.op import Op, register_function, register_op  # noqa: E402
from rayrec.etl.pipeline import run_etl  # noqa: E402
from rayrec.etl.spec import default_workflow, workflow_from_config  # noqa: E402
from rayrec.etl.workflow import Workflow  # noqa: E402

__all__ = ["EtlConfig", "InputError", "InputSpec", "Op", "Workflow", "default_workflow", "register_function",
           "register_op", "run_etl", "workflow_from_config"]
