"""The reference system, run beside rayrec: Transformers4Rec 23.12 in its own venv
(../shared/peers/t4r; setup.sh builds the venv on first use)."""
from __future__ import annotations

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T4R = os.path.join(ROOT, "..", "shared", "peers", "t4r")


def run_t4r(work: str, args: list[str], train: str | None = None, valid: str | None = None) -> dict | None:
    """T4R's bench.py on `train` and `valid` (a directory or parquet path; default
    `work`/train and `work`/valid) with `args`; its JSON line, or None when the peer is not
    beside this checkout (or failed, after printing why)."""
    if not os.path.isdir(T4R):
        return None
    python = subprocess.run(["bash", os.path.join(T4R, "setup.sh")], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    cmd = [python, os.path.join(T4R, "bench.py"), "--train", train or os.path.join(work, "train"),
           "--valid", valid or os.path.join(work, "valid"), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-3000:])
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])
