"""What every worker of a training run is told, as one typed value.

It crosses the driver -> worker boundary as JSON text (Ray Train's train_loop_config), so a
worker rebuilds exactly the configs the driver checked, and nothing live or untyped rides
along. The one thing that is not data, the driver's tracker, is handed to the loop only when
the loop runs in the driver's own process (`--workers 0`), where no boundary is crossed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from rayrec.models.config import ModelConfig
from rayrec.models.features import FeatureSpec
from rayrec.train.config import TrainConfig

Window = tuple[list[int], "int | None"]   # the days trained together, and the day evaluated after them


@dataclass
class RunSpec:
    model: ModelConfig
    train: TrainConfig
    data_dir: str                 # the ETL output: a path or a storage URI
    item_col: str
    features: list[FeatureSpec]
    days: list[Window]
    scratch: str                  # where rank 0 writes a checkpoint before Ray persists it
    resume_from: str | None = None  # `--resume`: the checkpoint directory (path or URI) to start from
    quiet: bool = False           # workers print no progress lines (a sweep's trials: the sweep reports)
    owns_process: bool = False    # in-process runs: the process is rayrec's (the CLI, a trial), so its
                                  # malloc settings may change while it trains; a library caller's stay

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        return cls(model=ModelConfig(**d["model"]), train=TrainConfig(**d["train"]), data_dir=d["data_dir"],
                   item_col=d["item_col"], features=[FeatureSpec(**f) for f in d["features"]],
                   days=[(list(w), e) for w, e in d["days"]], scratch=d["scratch"], resume_from=d["resume_from"],
                   quiet=d.get("quiet", False), owns_process=d.get("owns_process", False))
