"""rayrec commands as Ray Jobs: submit, follow, list, stop (the Jobs API of a cluster's
dashboard, through JobSubmissionClient).

The cluster is named by its dashboard URL (`--address`, else RAY_ADDRESS). Before any
call the address is probed once, so that an unreachable cluster, a missing token or a
wrong one each fail with what to do about it. A cluster token (Ray's token auth) is read
from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, sent as a bearer header
and never printed.
"""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HELP = ("pass the cluster's token in RAY_AUTH_TOKEN, or a file holding it in RAY_AUTH_TOKEN_PATH, or put "
              "it in ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)")
STOP_WAIT_S = 60   # a stopped job's entrypoint gets SIGTERM, then this long to keep its checkpoint


class JobError(ValueError):
    """A job command that cannot go on; the message says why and what to do."""


@dataclass
class JobRequest:
    """What `rayrec submit` sends: the command and the job's environment."""
    command: list[str]
    working_dir: str | None = None
    pip: list[str] = field(default_factory=list)
    num_cpus: float | None = None
    num_gpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    def entrypoint(self) -> str:
        cmd = list(self.command)
        if cmd and cmd[0] != "rayrec":
            cmd = ["rayrec", *cmd]
        return shlex.join(cmd)

    def runtime_env(self) -> dict:
        env = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "PYTHONUNBUFFERED": "1", **self.env}
        out: dict = {"env_vars": env}
        if self.working_dir:
            out["working_dir"] = os.path.abspath(self.working_dir)
        if self.pip:
            out["pip"] = list(self.pip)
        return out


def cluster_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no cluster given: pass --address http://HEAD:8265 (the Ray dashboard's URL) or set "
                       "RAY_ADDRESS")
    return address if "://" in address else f"http://{address}"


def read_token() -> str | None:
    """The cluster token from the environment or the usual file; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip() or None
    return None


def _headers() -> dict[str, str]:
    token = read_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def probe(address: str, timeout: float = 10.0) -> None:
    """Reach the Jobs API once; raise JobError saying what is wrong and how to fix it."""
    request = urllib.request.Request(f"{address.rstrip('/')}/api/version", headers=_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise JobError(f"{address} requires an authentication token and none was found: {TOKEN_HELP}") from None
        if e.code == 403:
            raise JobError(f"{address} refused the authentication token (a different cluster's, or an old "
                           f"one): {TOKEN_HELP}") from None
        raise JobError(f"{address}: the Jobs API answered HTTP {e.code}; is this a Ray dashboard?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise JobError(f"cannot reach the Ray cluster at {address} ({reason}). The address is the dashboard's "
                       "URL (http://HEAD:8265, printed by `ray start --head`); `ray status` on the head node shows "
                       "whether the cluster is up") from None


def client(address: str | None, verbose: bool = False):
    import logging

    from ray.job_submission import JobSubmissionClient

    if not verbose:   # Ray's client logs every upload and websocket event at INFO
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
    address = cluster_address(address)
    probe(address)
    return JobSubmissionClient(address, headers=_headers())


def submit(request: JobRequest, address: str | None, verbose: bool = False) -> tuple[object, str]:
    c = client(address, verbose)
    job_id = c.submit_job(entrypoint=request.entrypoint(), runtime_env=request.runtime_env(),
                          entrypoint_num_cpus=request.num_cpus, entrypoint_num_gpus=request.num_gpus)
    return c, job_id


RAY_JOB_INFO = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\tINFO (job_manager|dashboard_sdk|sdk)\.py")


def without_ray_info(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not RAY_JOB_INFO.match(line))


def follow(c, job_id: str, out=sys.stdout, verbose: bool = False) -> str:
    """Stream the job's log until it ends (without Ray's own INFO lines unless `verbose`);
    return its final status."""
    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk if verbose else without_ray_info(chunk))
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError:   # the log connection dropped: the status below still tells the end
        pass
    return wait(c, job_id)


def wait(c, job_id: str, timeout: float | None = None) -> str:
    start = time.monotonic()
    while True:
        status = c.get_job_status(job_id).value
        if status in TERMINAL or (timeout is not None and time.monotonic() - start > timeout):
            return status
        time.sleep(0.5)


def detached_help(job_id: str, address: str) -> str:
    return (f"detached; job {job_id} goes on.\n  follow: rayrec jobs logs {job_id} --follow --address {address}\n"
            f"  stop:   rayrec jobs stop {job_id} --address {address}")


def format_jobs(jobs) -> str:
    rows = [f"{'job':<28} {'status':<10} {'started':<19} entrypoint"]
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        rows.append(f"{j.submission_id or j.job_id:<28} {j.status.value:<10} {started:<19} {j.entrypoint[:80]}")
    return "\n".join(rows)
