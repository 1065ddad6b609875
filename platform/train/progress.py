"""Progress of a training window, shown by rank 0, and the loss curve it collects.

In a terminal (an in-process run) it is a tqdm bar; under Ray Train a worker's output
reaches the driver line by line, so there it is one line every `every` seconds. Either
way it says window, epoch, step, loss and sequences/s.

The loss curve (mean loss and learning rate every `log_every` steps, numbered by the
run's global step) rides to the driver in the next report, where TensorBoard and MLflow
write it: a worker may run on a node whose disk the user never sees.
"""
from __future__ import annotations

import sys
import time


def say(message: str) -> None:
    """One line to the user from a training process. Ray Train 2.60 patches `print` in its
    workers to log through the root logger and also tee to the (redirected) stdout, which
    shows every printed line twice at the driver; a plain write shows it once."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Progress:
    def __init__(self, label: str, total_steps: int, enabled: bool, every: float = 10.0,
                 log_every: int = 50, step: int = 0, done: int = 0):
        self.label, self.total, self.enabled, self.every = label, total_steps, enabled, every
        self.step, self.sequences, self.started = done, 0, time.perf_counter()
        self.last_line = self.started
        self.log_every, self.global_step = log_every, step
        self.curve: list[list[float]] = []     # [global step, mean loss, lr] not yet reported
        self.pending: list[float] = []
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=done, desc=label, unit="step", leave=False)

    def update(self, epoch: int, loss: float, sequences: int, lr: float = 0.0) -> None:
        self.step += 1
        self.global_step += 1
        self.sequences += sequences
        self.pending.append(loss)
        if len(self.pending) == self.log_every:
            self.curve.append([self.global_step, sum(self.pending) / len(self.pending), lr])
            self.pending = []
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = self.sequences / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", seq_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif now - self.last_line >= self.every:
            self.last_line = now
            say(f"[rayrec] {self.label} epoch {epoch + 1} step {self.step}/{self.total} loss {loss:.3f} "
                f"{rate:.0f} seq/s")

    def take_curve(self) -> list[list[float]]:
        """The curve points since the last call (for the next report)."""
        curve, self.curve = self.curve, []
        return curve

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
