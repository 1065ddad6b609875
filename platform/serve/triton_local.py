"""A real tritonserver on this machine, for trying an exported repository, the tests and
the benchmark: the binary inside the nvidia-pytriton wheel (Triton 2.51, python backend
only), in a venv of its own, because that wheel needs numpy<2.

The venv is built once per machine and source tree (~30 s) under ~/.cache/rayrec, into a
temporary folder renamed into place, and holds what the exported python models import:
onnxruntime, pyarrow, pandas, PyYAML, and this rayrec itself (editable, no dependencies).
The server binds 127.0.0.1 on free ports; `start` waits for the repository's models with
a timeout, because a python stub that cannot start leaves a model in "loading" for ever.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER_PACKAGES = ["nvidia-pytriton==0.7.0", "onnxruntime==1.31.1", "pyarrow==21.0.0", "pandas==3.0.6",
                   "PyYAML==6.0.4", "numpy==1.26.4"]


def venv_dir() -> str:
    key = hashlib.sha256(repr((SERVER_PACKAGES, ROOT, sys.version_info[:2])).encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser("~/.cache/rayrec"), f"triton-venv-{key}")


def server_venv() -> str:
    """The server's venv, built if missing. Raises RuntimeError (with pip's last lines)
    where it cannot be built, e.g. with no package index."""
    target = venv_dir()
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".triton-venv-", dir=os.path.dirname(target))
    try:
        # the venv is built where it will live: its scripts name their interpreter's path
        shutil.rmtree(tmp)
        subprocess.run([sys.executable, "-m", "venv", target], check=True, capture_output=True)
        pip = [os.path.join(target, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for args in (SERVER_PACKAGES, ["--no-deps", "-e", ROOT]):
            done = subprocess.run(pip + args, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"building the tritonserver venv ({' '.join(args)}) failed:\n"
                                   + "\n".join(done.stderr.strip().splitlines()[-5:]))
        open(os.path.join(target, ".complete"), "w").close()
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalTriton:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: str

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        """SIGTERM to the server this started (by its pid), then SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(repo: str | list[str], models: list[str], timeout_s: float = 120.0, env: dict | None = None) -> LocalTriton:
    """tritonserver on `repo` (or several), every model of `models` loaded (explicit
    control mode), on free 127.0.0.1 ports; its output goes to REPO.tritonserver.log."""
    repos = [repo] if isinstance(repo, str) else list(repo)
    venv = server_venv()
    site = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    triton = os.path.join(site, "pytriton", "tritonserver")
    backends = os.path.join(venv, "triton-backends")
    if not os.path.isdir(os.path.join(backends, "python")):
        os.makedirs(os.path.join(backends, "python"))
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy(os.path.join(triton, "backends", "python", name), os.path.join(backends, "python", name))
        stub = os.path.join(triton, "python_backend_stubs", f"{sys.version_info[0]}.{sys.version_info[1]}",
                            "triton_python_backend_stub")
        os.symlink(stub, os.path.join(backends, "python", "triton_python_backend_stub"))
    libs = [sysconfig.get_config_var("LIBDIR")] + [p for p in (os.path.join(site, "pytriton", "tritonserver",
                                                                            "external_libs"),
                                                               os.path.join(triton, "external_libs"))
                                                   if os.path.isdir(p)]
    run_env = dict(os.environ, **(env or {}))
    run_env["PATH"] = os.path.join(venv, "bin") + os.pathsep + run_env.get("PATH", "")
    run_env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [run_env.get("LD_LIBRARY_PATH", "")])
    run_env.pop("PYTHONPATH", None)
    http, grpc = free_port(), free_port()
    log = os.path.abspath(repos[0].rstrip("/")) + ".tritonserver.log"
    cmd = [os.path.join(triton, "bin", "tritonserver"), *[f"--model-repository={r}" for r in repos],
           f"--backend-directory={backends}", "--model-control-mode=explicit",
           *[f"--load-model={m}" for m in models],
           "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
           "--allow-metrics=false", "--exit-timeout-secs=5", "--log-verbose=0"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=run_env)
    server = LocalTriton(process, http, grpc, log)
    try:
        wait_ready(server, models, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: LocalTriton, models: list[str], timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"tritonserver exited ({server.process.returncode}); its log:\n{tail(server.log)}")
        try:
            ready = all(urllib.request.urlopen(f"http://{server.http_url}/v2/models/{m}/ready", timeout=2).status
                        == 200 for m in models)
            if ready:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"tritonserver: {models} not ready within {timeout_s:.0f} s; its log:\n{tail(server.log)}")


def tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
