"""TensorBoard event files and MLflow runs, written on the driver's machine.

Ray Train runs user callbacks in its controller, which Ray pins to the driver's node, so
the files land where the user looks even when rank 0 trains on another node. Each report
carries the loss curve since the previous one; window metrics are logged at the global
step (batches since the run began) where the window ended.

MLflow logs to a local file store through its client (no server). MLflow 3 refuses
file stores unless MLFLOW_ALLOW_FILE_STORE is set, which this module sets for itself:
the issue asks for exactly that store, and it needs no database.
"""
from __future__ import annotations

import os
import time
from typing import Any

from ray.train import UserCallback

from rayrec.train.config import TrainConfig

WINDOW_KEYS = ("train_loss", "sequences_per_s", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@20",
               "map@20", "precision@20")


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested configs as MLflow params ("model.d_model": "64")."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:500]  # MLflow's limit on a param value
    return out


def mlflow_uri(where: str) -> str:
    return where if "://" in where else "file://" + os.path.abspath(where)


class Tracker:
    """Writes what the reports carry; `start` on the driver, `log` wherever reports arrive."""

    def __init__(self, tcfg: TrainConfig, tensorboard_dir: str | None, run_name: str):
        self.tensorboard_dir = tensorboard_dir if tcfg.tensorboard else None
        self.mlflow = mlflow_uri(tcfg.mlflow) if tcfg.mlflow else None
        self.experiment, self.run_name = tcfg.mlflow_experiment, run_name
        self.run_id: str | None = None
        self._writer = None

    @property
    def enabled(self) -> bool:
        return bool(self.tensorboard_dir or self.mlflow)

    def _client(self):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ValueError("train.mlflow needs MLflow: pip install 'rayrec[track]' (mlflow-skinny)") from None

        return MlflowClient(tracking_uri=self.mlflow)

    def start(self, params: dict) -> None:
        """Create the MLflow run (its id travels with this object to the controller)."""
        if not self.mlflow:
            return
        client = self._client()
        found = client.get_experiment_by_name(self.experiment)
        experiment = found.experiment_id if found else client.create_experiment(self.experiment)
        run = client.create_run(experiment, run_name=self.run_name)
        self.run_id = run.info.run_id
        items = sorted(flatten("", params, {}).items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):  # MLflow's batch limit
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])

    def log(self, metrics: dict) -> None:
        """One report of rank 0: its loss curve and, at a window's end, the window's metrics."""
        curve = metrics.get("curve") or []
        points = [(int(s), "train/loss", float(loss)) for s, loss, _ in curve] + \
                 [(int(s), "train/lr", float(lr)) for s, _, lr in curve]
        if "sequences_per_s" in metrics and "global_step" in metrics:  # a window's record
            step = int(metrics["global_step"])
            points += [(step, f"window/{k}", float(metrics[k])) for k in WINDOW_KEYS if k in metrics]
            points.append((step, "window/train_day", float(metrics["train_day"])))
        if not points:
            return
        if self.tensorboard_dir:
            if self._writer is None:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(self.tensorboard_dir)
            for step, key, value in points:
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self.mlflow and self.run_id:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client = self._client()
            batch = [Metric(key.replace("@", "_at_"), value, now, step) for step, key, value in points]
            for i in range(0, len(batch), 1000):
                client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def finish(self, artifacts: list[str], status: str = "FINISHED") -> None:
        """Attach the run's files (metrics.json, CSV, PNG) and close the MLflow run."""
        if self._writer is not None:
            self._writer.close()
        if not (self.mlflow and self.run_id):
            return
        client = self._client()
        for path in artifacts:
            if os.path.exists(path):
                client.log_artifact(self.run_id, path)
        client.set_terminated(self.run_id, status=status)


class TrackerCallback(UserCallback):
    """Runs in Ray Train's controller: hands rank 0's report to the tracker."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            self.tracker.log(metrics[0])
