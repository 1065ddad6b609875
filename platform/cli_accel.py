"""`rayrec build-kernels`: compile rayrec's C kernels for this machine, ahead of any run.

`make install`, the Dockerfile and the cluster images run it, so that no training worker,
Serve replica, evaluation or export compiles at start. A node where it did not run (or
failed) trains on the kernels' torch passes, which draw the same numbers, and says so once.
"""
from __future__ import annotations

import argparse
import sys


def cmd_build_kernels(a) -> int:
    from rayrec.accel import kernels

    try:
        path = kernels.compile_library()
    except kernels.KernelBuildError as e:
        print(f"rayrec build-kernels: not built: {e}", file=sys.stderr)
        print("rayrec build-kernels: training and serving still work, on the kernels' torch passes",
              file=sys.stderr)
        return 0 if a.optional else 1
    print(f"rayrec C kernels for this machine: {path}")
    return 0


def add_kernels_parser(sub) -> None:
    k = sub.add_parser("build-kernels", help="compile rayrec's C kernels for this machine (once per node or image)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--optional", action="store_true",
                   help="exit 0 when they do not build (no compiler): the torch passes run instead")
    k.set_defaults(func=cmd_build_kernels)
