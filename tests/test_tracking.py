"""TensorBoard event files and an MLflow file store, written by real runs and read back."""
import glob
import json
import os
import struct

import pytest

from rayrec.models.config import ModelConfig
from rayrec.train.config import TrainConfig
from rayrec.train.trainer import run_training

MODEL = ModelConfig(arch="gpt2", masking="clm", d_model=32, n_head=2, n_layer=1)


def tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in `directory` (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def check_logs(run: str, store: str, metrics: dict, log_every: int) -> None:
    from mlflow.tracking import MlflowClient

    steps = metrics["days"][-1]["global_step"]
    tb = tensorboard_scalars(os.path.join(run, "tensorboard"))
    assert [s for s, _ in tb["train/loss"]] == list(range(log_every, steps + 1, log_every))
    assert [s for s, _ in tb["window/ndcg_20"]] == [d["global_step"] for d in metrics["days"]]
    for (_, value), day in zip(tb["window/ndcg_20"], metrics["days"]):
        assert value == pytest.approx(day["ndcg@20"], rel=1e-6)

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri="file://" + store)
    [found] = client.search_runs([client.get_experiment_by_name("rayrec").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == os.path.basename(run)
    assert found.data.params["model.d_model"] == "32" and found.data.params["train.epochs"] == "2"
    history = client.get_metric_history(found.info.run_id, "window/recall_at_20")
    assert [m.value for m in history] == pytest.approx([d["recall@20"] for d in metrics["days"]])
    assert len(client.get_metric_history(found.info.run_id, "train/loss")) == len(tb["train/loss"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "metrics.csv", "metrics.png"} <= artifacts


@pytest.mark.parametrize("workers", [0, 2])
def test_tensorboard_and_mlflow_receive_the_loss_curve_and_window_metrics(etl_dir, tmp_path, workers):
    """In-process, the loop hands reports to the tracker; on Ray, the controller's callback does."""
    import ray

    tcfg = TrainConfig(workers=workers, epochs=2, batch_size=64, train_days="1:2", seed=1, tensorboard=True,
                       mlflow=str(tmp_path / "mlruns"), log_every=7, checkpoint_every=10)
    try:
        metrics = run_training(etl_dir, str(tmp_path / "run"), MODEL, tcfg)
    finally:
        ray.shutdown()
    assert json.load(open(tmp_path / "run" / "metrics.json"))["days"] == metrics["days"]
    check_logs(str(tmp_path / "run"), str(tmp_path / "mlruns"), metrics, log_every=7)
