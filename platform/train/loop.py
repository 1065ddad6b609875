"""The training loop each Ray Train worker runs (and `--workers 0` runs in-process).

Day by day: train on day t's sessions starting from the weights left by day t-1 (a fresh
optimizer and learning-rate schedule each day), evaluate on day t+1, and report the
metrics with a checkpoint. After a worker failure Ray restarts the group, which resumes
from the last reported checkpoint: the next window, or, with checkpoints inside windows
(every epoch or N steps), the saved epoch and batch of the window.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rayrec.files import local_copy
from rayrec.metrics import finalize
from rayrec.models.batch import Batch, concat_batches, take, to_tensors
from rayrec.accelerated import new_model
from rayrec.models.session_model import SessionModel
from rayrec.train.allocator import keep_freed_memory, restore_allocator
from rayrec.train.config import TrainConfig
from rayrec.train.data import load_batch, shard_rows, split_path
from rayrec.threads import threads_for, wait_in_effect, wait_report
from rayrec.train.progress import Progress, say
from rayrec.train.spec import RunSpec
from rayrec.train.sparse_sync import SparseRowSync, broadcast_from_rank0, catalogue_parameters, exclude_from_ddp
from rayrec.train import checkpoints
from rayrec.train.checkpoints import CheckpointManager, apply_train_state, position_text
from rayrec.train.reporting import Reporter, all_reduce_sums, replica_check
from rayrec.train.session import Listener, LocalSession, RaySession
from rayrec.train.optim import autocast, grad_scaler, make_optimizer, make_schedule, precision
from rayrec.train.evaluate import model_metric_sums


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: `config` holds the RunSpec as JSON."""
    spec = RunSpec.from_json(config["spec"])
    with training_process(worker_threads(spec.train.threads_per_worker)), open(os.devnull, "w") as null, \
            contextlib.redirect_stdout(null) if spec.quiet else contextlib.nullcontext():
        quiet_report_log()
        _train(spec, RaySession(spec.scratch, spec.train))


def run_in_process(spec: RunSpec, listeners: list[Listener] = ()) -> CheckpointManager:
    """The loop in the caller's process, its checkpoints kept in `spec.scratch` (resumed
    from, when an earlier attempt left some there). Returns their manager."""
    manager = CheckpointManager(spec.scratch, spec.train.keep_checkpoints, spec.train.checkpoint_metric)
    with training_process(threads_for(spec.train.threads_per_worker), allocator=spec.owns_process):
        _train(spec, LocalSession(manager, spec.train, listeners))
    return manager


def worker_threads(setting) -> int:
    """A Ray Train worker's threads: `auto` splits its node's cores between the run's
    workers on that node."""
    import ray.train

    return threads_for(setting, ray.train.get_context().get_local_world_size())


@contextlib.contextmanager
def training_process(threads: int, allocator: bool = True):
    """The process settings a training loop wants (its torch threads, and, in a process
    rayrec owns, freed memory kept in the heap), undone afterwards: with `--workers 0` the
    loop runs in the caller's process, which must get its own settings back. A caller's
    notebook or service (`allocator` False) keeps its malloc settings throughout."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    kept = keep_freed_memory() if allocator else False
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if kept:
            restore_allocator()


def _train(spec: RunSpec, session: RaySession | LocalSession) -> None:
    tcfg, mcfg, features = spec.train, spec.model, spec.features
    rank, world = session.rank, session.world
    torch.manual_seed(tcfg.seed)
    model = new_model(mcfg, features)
    # the path each worker actually runs (accel's fast forwards and kernels, or why not), for metrics.json
    accel = session.gather({"rank": rank, "node": session.node, "threads": torch.get_num_threads(),
                            "omp_wait": wait_in_effect(), **model.accel_report})
    targets = [h.target for h in mcfg.heads]
    reporter = Reporter(spec, session)

    def load(day: int, split: str) -> Batch:  # this worker's shard of the day's split
        return load_batch(split_path(spec.data_dir, day, split), features, targets, mcfg.max_len, rank, world)

    if rank == 0 and not spec.quiet:
        say(f"[rayrec] training {session.where} {torch.get_num_threads()} torch thread(s) "
            f"(train.threads_per_worker: {tcfg.threads_per_worker}), "
            f"{wait_report(tcfg.omp_wait, 'train.omp_wait')}, "
            f"{session.precision} (train.precision: {tcfg.precision})")
    history: list[dict] = []
    attempt, state = 0, None  # worker-group restarts so far; a window's unfinished training state
    with session.restored() as d:  # after a failure: the group's (or the earlier attempt's) last checkpoint
        restarted = d is not None
        if restarted:
            history, state = checkpoints.load(model, d)
    if restarted:
        earlier = [r.get("attempt", 0) for r in history] + ([state["partial"].get("attempt", 0)] if state else [])
        attempt = max(earlier, default=0) + 1
        if rank == 0:
            say(f"[rayrec] restart {attempt} from the last checkpoint: {len(history)} window(s) done"
                f"{where(state)}")
    elif spec.resume_from:  # `rayrec train --resume RUN`: that run's last checkpoint
        with local_copy(spec.resume_from, "run checkpoint") as d:
            history, state = checkpoints.load(model, d)
        if rank == 0 and state:
            say(f"[rayrec] resuming {len(history)} finished window(s){where(state)}")
    start = len(history)
    trained, planned = [r["train_day"] for r in history], [window[0] for window, _ in spec.days]
    if planned[:start] != trained:
        raise ValueError(f"the checkpoint has trained days {trained}, which do not begin the planned days {planned}")
    device = session.device
    sparse = catalogue_parameters(model, features[0].cardinality) \
        if world > 1 and tcfg.sparse_embedding_sync(mcfg.loss) else {}
    if sparse:
        exclude_from_ddp(model, list(sparse))
    model = session.prepare(model)
    core: SessionModel = model.module if hasattr(model, "module") else model
    row_sync = None
    if sparse:
        broadcast_from_rank0(list(sparse.values()))
        row_sync = SparseRowSync(list(sparse.values()))
    global_step = history[-1].get("global_step", 0) if history else 0

    for step, (window, eval_day) in enumerate(spec.days):
        if step < start:
            continue
        train_day = window[0]
        data = concat_batches([load(d, "train") for d in window])

        def evaluate() -> dict:  # the metrics on the day after the window (empty when it has none)
            if eval_day is None:
                return {}
            batch = load_batch(split_path(spec.data_dir, eval_day, tcfg.eval_split), features, targets,
                               mcfg.max_len, rank, world, cover_all=True)
            scores = finalize(all_reduce_sums(model_metric_sums(core, batch, tcfg.eval_batch_size, device=device)))
            return scores if scores["count"] else {}

        def save_partial(partial: dict, optimizer, schedule) -> None:  # a checkpoint inside the window
            scores = {}
            if tcfg.eval_every == "epoch" and partial["micro_done"] == 0:   # an epoch's end
                scores = evaluate()
                model.train()
                scores = dict(scores, eval_day=eval_day, evaluation=step * tcfg.epochs + partial["epochs_done"]) \
                    if scores else {}
            reporter.partial(core, history, dict(partial, attempt=attempt), optimizer, schedule, scores)

        resume = state if state and state["partial"]["window"] == train_day else None
        inside = tcfg.checkpoint_every != "window" or tcfg.eval_every == "epoch"
        train = train_one_day(model, tcfg, data, rank, world, train_day, device, resume,
                              save_partial if inside else None, first_step=global_step, row_sync=row_sync,
                              chosen=session.precision)
        state = None
        global_step = train["global_step"]
        record = {"train_day": train_day, "window": window, "window_index": step + 1, "eval_day": eval_day,
                  "evaluation": (step + 1) * tcfg.epochs if tcfg.eval_every == "epoch" else step + 1,
                  "attempt": attempt, **train, "accel": accel}
        scores = evaluate()
        if scores:
            record.update(scores)
        else:  # nothing to evaluate on that day: the record carries no metrics
            record["eval_day"] = None
        if world > 1:
            record.update(replica_check(core))
        reporter.window(core, record, history)


def quiet_report_log() -> None:
    """Ray Train 2.60 logs every report at INFO under a logger named by its file path, so its
    LoggingConfig (which filters `ray.train.*`) misses it; silence that one logger. No public
    API reaches it (the logger's name is the module's file), so this names Ray's module, and
    pyproject pins ray==2.60.0."""
    import ray.train.v2._internal.execution.context as context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def where(state: dict | None) -> str:
    return f", resuming at {position_text(state['partial'])}" if state else ""


def train_one_day(model, tcfg: TrainConfig, data: Batch, rank: int, world: int, day: int,
                  device: torch.device = torch.device("cpu"), resume: dict | None = None,
                  save_partial=None, first_step: int = 0, row_sync=None, chosen: str | None = None) -> dict:
    """Epochs over this worker's shard: fresh AdamW and schedule (or, with `resume`, the
    saved ones, from the saved position: epoch and batch), optional autocast, gradient
    accumulation (without DDP syncs on the inner micro-batches) and clipping.
    `save_partial(partial, optimizer, schedule)` runs at every checkpoint inside the
    window (after each epoch but the last, or every N optimizer steps). `row_sync` (the
    catalogue tables' sparse gradient exchange) runs after the last micro-batch's backward.
    `chosen` is the session's precision (default: train.precision resolved for one process)."""
    chosen = chosen or precision(tcfg, device)
    optimizer = make_optimizer(model, tcfg)
    n = len(next(iter(data.values())))
    micro = -(-n // tcfg.batch_size)  # micro-batches per epoch on this worker's shard
    steps_per_epoch = max(1, -(-micro // tcfg.grad_accum))
    schedule = make_schedule(optimizer, tcfg, steps_per_epoch)
    scaler = grad_scaler(chosen, device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses, seen, first_epoch, first_micro, before = [], 0, 0, 0, 0.0
    if resume:
        apply_train_state(resume, optimizer, schedule)
        p = resume["partial"]
        losses, seen, first_epoch, before = p["losses"], p["seen"], p["epochs_done"], p["seconds"]
        first_micro = p.get("micro_done", 0)
    progress = Progress(f"day {day}", micro * tcfg.epochs, enabled=rank == 0, log_every=tcfg.log_every,
                        step=first_step + len(losses), done=len(losses))
    every = tcfg.checkpoint_steps
    started = time.perf_counter()

    def position(epoch: int, done: int) -> dict:  # after `done` micro-batches of `epoch`
        if done == micro:
            epoch, done = epoch + 1, 0
        return {"window": day, "epochs_done": epoch, "micro_done": done, "losses": losses, "seen": seen,
                "seconds": before + time.perf_counter() - started, "global_step": progress.global_step,
                "curve": progress.take_curve()}

    for epoch in range(first_epoch, tcfg.epochs):
        rows = shard_rows(n, rank, world, seed=tcfg.seed * 7919 + day * 101 + epoch)
        for j, batch in prefetched(data, rows, tcfg.batch_size, first_micro if epoch == first_epoch else 0, micro,
                                   device):
            # masks and dropout: a function of the position, so a resumed run draws what it would have
            torch.manual_seed(int(np.random.SeedSequence([tcfg.seed, day, epoch, j, rank]).generate_state(1)[0]))
            picked = rows[j * tcfg.batch_size:(j + 1) * tcfg.batch_size]
            last_micro = (j + 1) % tcfg.grad_accum == 0 or j == micro - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(chosen, device):
                    loss = model(batch)
                scaler.scale(loss / tcfg.grad_accum).backward()
            if last_micro:
                if row_sync is not None:
                    row_sync()
                if tcfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            losses.append(loss.item())
            seen += len(picked)
            progress.update(epoch, losses[-1], len(picked) * world, lr=optimizer.param_groups[0]["lr"])
            window_ends = epoch == tcfg.epochs - 1 and j == micro - 1
            if save_partial and every and last_micro and schedule.last_epoch % every == 0 and not window_ends:
                save_partial(position(epoch, j + 1), optimizer, schedule)
        if save_partial and "epoch" in (tcfg.checkpoint_every, tcfg.eval_every) and epoch < tcfg.epochs - 1:
            save_partial(position(epoch, micro), optimizer, schedule)
    progress.close()
    seconds = before + time.perf_counter() - started
    return {"train_loss": float(np.mean(losses[-max(1, len(losses) // 4):])) if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan"),
            "train_sequences": seen * world, "train_seconds": round(seconds, 3),
            "sequences_per_s": round(seen * world / seconds, 1) if seconds > 0 else 0.0,
            "global_step": first_step + len(losses), "curve": progress.take_curve(),
            **({"sparse_sync_mib_per_step": round(row_sync.bytes_per_step() / 2**20, 3)} if row_sync else {})}


def prefetched(data: Batch, rows: np.ndarray, size: int, first: int, stop: int, device: torch.device):
    """(j, batch j) for j in [first, stop): batch j + 1 is cut from the shard (and pinned,
    for a GPU) in a background thread while step j runs; GPU copies do not block."""
    def cut(j: int) -> dict[str, torch.Tensor]:
        batch = to_tensors(take(data, rows[j * size:(j + 1) * size]))
        return batch if device.type == "cpu" else {k: v.pin_memory() for k, v in batch.items()}

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(cut, first) if first < stop else None
        for j in range(first, stop):
            batch = ahead.result()
            ahead = pool.submit(cut, j + 1) if j + 1 < stop else None
            yield j, batch if device.type == "cpu" else {k: v.to(device, non_blocking=True) for k, v in batch.items()}
