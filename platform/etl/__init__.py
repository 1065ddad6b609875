"""Raw events -> day-partitioned session parquet, a schema, and a fitted workflow."""
from rayrec.etl.config import EtlConfig
from rayrec.etl.pipeline import run_etl
from rayrec.etl.workflow import SessionWorkflow

__all__ = ["EtlConfig", "SessionWorkflow", "run_etl"]
