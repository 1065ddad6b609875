"""Training options (YAML section `train:`; CLI flags override)."""
from __future__ import annotations

from dataclasses import dataclass

from rayrec.config_io import at_least


@dataclass
class TrainConfig:
    epochs: int = 4                # passes over each day's training sessions
    batch_size: int = 128          # per worker
    lr: float = 5e-3
    weight_decay: float = 0.01
    workers: int = 2               # Ray Train workers; 0 runs the loop in-process
    threads_per_worker: int | str = "auto"   # torch threads per worker; auto: in-process, every usable
                                   # core; under Ray Train, the node's cores split between its workers
    omp_wait: int | str = "auto"   # how idle torch threads wait: auto (a short spin, so that a neighbour
                                   # process costs little) | passive | N (a spin count; libgomp's is 300000)
    train_days: str | None = None  # "A:B" inclusive; default: every day that has a next day
    seed: int = 0
    eval_split: str = "valid"      # split of day t+1 evaluated after training on day t
    max_failures: int = 0          # worker-group restarts from the last checkpoint
    eval_batch_size: int = 512
    eval_every: str = "window"     # window | epoch: also evaluate (and checkpoint) after each epoch of a window,
                                   # so that a sweep's scheduler sees a learning curve inside one long window
    use_gpu: bool = False          # one GPU per worker, DDP over NCCL (gloo on CPU)
    placement: str = "pack"        # pack: fill a node first | spread: one worker per node where possible
    keep_checkpoints: int = 2      # checkpoints kept in the Ray run (the latest is always kept)
    checkpoint_metric: str | None = None  # keep the best by this metric (e.g. recall@20), else the newest
    checkpoint_every: str | int = "window"  # window | epoch | N optimizer steps (epoch and N add optimizer,
                                   # schedule and position: restarts resume inside a window)
    storage: str | None = None     # where Ray keeps checkpoints: a path or a pyarrow/fsspec URI (s3://, gs://...)
                                   # shared by all nodes; default: inside the run directory being written
    schedule: str = "linear"       # linear (decay to 0) | cosine | constant, each after `warmup`
    warmup: float = 0.0            # fraction of a window's optimizer steps spent warming up linearly
    cosine_cycles_per_epoch: float | None = None  # cosine: None = half a cycle over the window
    grad_clip: float = 0.0         # max global gradient norm (0: no clipping)
    grad_accum: int = 1            # micro-batches per optimizer step
    window_days: int = 1           # days per training window (train on a window, evaluate on the next day)
    precision: str = "auto"        # auto | fp32 | bf16 (autocast, CPU or GPU) | fp16 (GPU, with a grad scaler);
    #                                auto: in-process, bf16 where the hardware multiplies bf16 natively (CPU AMX,
    #                                GPU), else fp32; fp32 on Ray Train workers
    embedding_sync: str = "auto"   # dense | sparse | auto: catalogue-sized gradients across ranks as touched
                                   # rows (sparse) or DDP's dense all-reduce; auto = sparse under sampled softmax
    tensorboard: bool = False      # TensorBoard event files in RUN/tensorboard
    mlflow: str | None = None      # MLflow file store (a directory or file:// URI) to log params and metrics to
    mlflow_experiment: str = "rayrec"
    log_every: int = 50            # steps averaged into one point of the loss curve (TensorBoard, MLflow)

    def __post_init__(self):
        from rayrec.threads import check_threads, check_wait

        check_threads(self.threads_per_worker, "train.threads_per_worker")
        check_wait(self.omp_wait, "train.omp_wait")
        if self.workers < 0:
            raise ValueError("train.workers must be >= 0")
        if self.placement not in ("pack", "spread"):
            raise ValueError(f"train.placement must be pack or spread; got {self.placement!r}")
        if self.keep_checkpoints < 1:
            raise ValueError("train.keep_checkpoints must be >= 1")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"train.schedule must be linear, cosine or constant; got {self.schedule!r}")
        if not 0 <= self.warmup < 1 or self.grad_clip < 0 or self.grad_accum < 1:
            raise ValueError("train.warmup must lie in [0, 1), grad_clip >= 0 and grad_accum >= 1")
        if self.checkpoint_every not in ("window", "epoch") and self.checkpoint_steps is None:
            raise ValueError("train.checkpoint_every must be window, epoch or a number of optimizer steps >= 1; "
                             f"got {self.checkpoint_every!r}")
        if self.embedding_sync not in ("auto", "dense", "sparse"):
            raise ValueError(f"train.embedding_sync must be auto, dense or sparse; got {self.embedding_sync!r}")
        if self.eval_every not in ("window", "epoch"):
            raise ValueError(f"train.eval_every must be window or epoch; got {self.eval_every!r}")
        if self.log_every < 1:
            raise ValueError("train.log_every must be >= 1")
        if self.window_days < 1:
            raise ValueError("train.window_days must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16; got {self.precision!r}")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision fp16 needs use_gpu (on CPU use bf16)")
        at_least("train", self, ("epochs", "batch_size", "eval_batch_size"), 1)
        at_least("train", self, ("weight_decay", "max_failures"), 0)
        at_least("train", self, ("lr", "cosine_cycles_per_epoch"), 0, strict=True)

    def sparse_embedding_sync(self, loss: str) -> bool:
        """Exchange catalogue tables' gradients as rows: asked for, or `auto` under sampled softmax."""
        return self.embedding_sync == "sparse" or (self.embedding_sync == "auto" and loss == "sampled")

    @property
    def checkpoint_steps(self) -> int | None:
        """N when checkpoint_every is a number of optimizer steps (an int, or digits in a string)."""
        every = self.checkpoint_every
        if isinstance(every, bool):
            return None
        if isinstance(every, str) and every.strip().isdigit():
            every = int(every)
        return every if isinstance(every, int) and every >= 1 else None


def parse_days(spec: str | None, available: list[int]) -> list[int]:
    """'A:B' (inclusive), 'A' or None -> the days to train on, checked against the data."""
    if not available:
        raise ValueError("the dataset has no day directories")
    if spec is None:
        days = available[:-1] or available
    else:
        try:
            a, _, b = str(spec).partition(":")
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise ValueError(f"days must look like A:B or A, got {spec!r}") from None
        days = [d for d in available if lo <= d <= hi]
        if not days:
            raise ValueError(f"no day in {spec!r}; the dataset has days {available}")
    return days
