"""Progress of a training window, shown by rank 0.

In a terminal (an in-process run) it is a tqdm bar; under Ray Train a worker's output
reaches the driver line by line, so there it is one line every `every` seconds. Either
way it says window, epoch, step, loss and sequences/s.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total_steps: int, enabled: bool, every: float = 10.0):
        self.label, self.total, self.enabled, self.every = label, total_steps, enabled, every
        self.step, self.sequences, self.started = 0, 0, time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=label, unit="step", leave=False)

    def update(self, epoch: int, loss: float, sequences: int) -> None:
        if not self.enabled:
            return
        self.step += 1
        self.sequences += sequences
        now = time.perf_counter()
        rate = self.sequences / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", seq_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif now - self.last_line >= self.every:
            self.last_line = now
            print(f"[rayrec] {self.label} epoch {epoch + 1} step {self.step}/{self.total} loss {loss:.3f} "
                  f"{rate:.0f} seq/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
