"""`rayrec tune`: its flags and what runs them (kept beside cli.py, which it plugs into)."""
from __future__ import annotations

import argparse

TUNE_HELP = """\
Each trial is a rayrec training run over the same dataset files; its evaluations (one per
window) are reported to Ray Tune, so asha and median stop poor trials early. SWEEP/ gets
results.csv and results.json (one row per trial), best.yaml (for rayrec train --config),
sweep.png and trials/ID/run/ (each trial's run directory).

SPACE.yaml gives model. and train. keys a distribution: choice, grid, uniform, loguniform,
randint [low, high] (both ends included), or a plain value. `when:` applies a key (or one
option) only under other keys' values; `divides:` keeps values dividing another key's:

  model.arch: {grid: [gpt2, xlnet]}
  model.masking: {grid: [clm, mlm, {value: plm, when: {model.arch: xlnet}}]}
  model.d_model: {choice: [64, 128]}
  model.n_head: {choice: [2, 4, 8], divides: model.d_model}
  model.mlm_probability: {uniform: [0.1, 0.4], when: {model.masking: mlm}}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  train.epochs: 3

docs/tune.md has the whole format."""



def add_tune_parser(sub, add_config) -> None:
    tu = sub.add_parser("tune", help="sweep architectures, masking schemes and hyperparameters on Ray Tune",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=TUNE_HELP)
    tu.add_argument("--data", help="output directory of rayrec etl")
    tu.add_argument("--out", help="sweep directory to write (SWEEP)")
    tu.add_argument("--space", help="SPACE.yaml: model./train. keys and their distributions (see below)")
    add_config(tu)
    tu.add_argument("--samples", type=int, help="draws of the non-grid keys, each over every grid combination "
                    "(default 1 with --search grid, else 8)")
    tu.add_argument("--search", default="random", choices=["random", "grid", "optuna"])
    tu.add_argument("--scheduler", default="fifo", choices=["fifo", "asha", "median"],
                    help="fifo runs every trial to the end; asha and median stop poor ones early")
    tu.add_argument("--metric", default="ndcg@20", help="what the sweep optimizes (default ndcg@20)")
    tu.add_argument("--mode", default="max", choices=["max", "min"])
    tu.add_argument("--concurrent", type=int, help="trials at once (default: as many as the cluster holds)")
    tu.add_argument("--workers-per-trial", type=int, default=0,
                    help="Ray Train workers per trial (default 0: each trial trains in its own process)")
    tu.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) per worker (default 1)")
    tu.add_argument("--gpus-per-worker", type=float, default=0.0)
    tu.add_argument("--grace", type=int, default=1, help="asha/median: windows before a trial may be stopped")
    tu.add_argument("--seed", type=int, default=0, help="seed of the trial draws (default 0)")
    tu.add_argument("--address", help="Ray cluster to join (default RAY_ADDRESS, else a local cluster)")
    tu.add_argument("--resume", nargs="?", const=True, metavar="SWEEP",
                    help="finish an interrupted sweep (finished trials are kept, unfinished ones resume)")
    tu.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tu.add_argument("--verbose", action="store_true", help="also show Ray Tune's status tables and INFO lines")
    tu.set_defaults(func=cmd_tune)



def cmd_tune(a) -> int:
    from rayrec.stages import TuneJob, tune

    tune(TuneJob.from_options({k: v for k, v in vars(a).items() if k in TuneJob.KEYS}))
    return 0
