"""A real two-host Ray cluster on this machine: two network namespaces made by the test (a
veth pair, one private address in each), `ray start --head` in one and `ray start
--address` in the other, token auth on both, and an S3-compatible server (moto) beside the
head. Nothing listens outside the namespaces; everything started is stopped by pid and
the namespaces are deleted afterwards.

Clients run inside the head's namespace (`NetnsCluster.run`), as a laptop on the cluster's
network would.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from s3server import moto_command, wait_http

BIN = os.path.dirname(sys.executable)
IP = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "ip"


def netns_available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.isfile(IP):
        return "iproute2's `ip` is not installed"
    name = f"rrprobe{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    return None


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class NetnsCluster:
    def __init__(self, tmp: str, cpus: tuple[int, int] = (1, 1)):
        tag = f"{os.getpid() % 100000}{random.randint(0, 9)}"
        self.ns = (f"rrh{tag}", f"rrw{tag}")
        net = f"10.{random.randint(64, 127)}.{random.randint(0, 254)}"
        self.ip = (f"{net}.1", f"{net}.2")
        self.tmp, self.cpus = tmp, cpus
        self.token = secrets.token_hex(32)
        self.dashboard = f"http://{self.ip[0]}:8265"
        self.gcs = f"{self.ip[0]}:6379"
        self.s3 = f"http://{self.ip[0]}:9000"
        self.home = os.path.join(tmp, "home")
        short = tempfile.mkdtemp(prefix="rr", dir="/tmp")   # Ray's socket paths must stay under 107 bytes
        self.temp_dirs = (os.path.join(short, "h"), os.path.join(short, "w"))

    # --- environment ------------------------------------------------------------------
    def env(self, token: str | None = "cluster", **extra: str) -> dict[str, str]:
        """A process's environment on this cluster: the venv first on PATH, S3 credentials
        and endpoint, token auth (`token=None`: no token at all, or a given wrong one)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.update(PATH=f"{BIN}:{env.get('PATH', '')}", HOME=self.home, RAY_AUTH_MODE="token",
                   AWS_ACCESS_KEY_ID="rayrec-test", AWS_SECRET_ACCESS_KEY="rayrec-test-secret",
                   AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=self.s3, AWS_EC2_METADATA_DISABLED="true",
                   RAY_DEDUP_LOGS="0", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
        if token == "cluster":
            env["RAY_AUTH_TOKEN"] = self.token
        elif token is not None:
            env["RAY_AUTH_TOKEN"] = token
        env.update(extra)
        return env

    def command(self, cmd: list[str], node: int = 0) -> list[str]:
        return [IP, "netns", "exec", self.ns[node], *cmd]

    def run(self, cmd: list[str], node: int = 0, timeout: float = 600, token: str | None = "cluster",
            **extra) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(cmd, node), env=self.env(token, **extra), capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def popen(self, cmd: list[str], node: int = 0, **extra) -> subprocess.Popen:
        return subprocess.Popen(self.command(cmd, node), env=self.env(**extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=self.tmp)

    def python(self, code: str, timeout: float = 120):
        """Run Python in the head's namespace (where S3 is reachable); its last line as JSON."""
        out = self.run([sys.executable, "-c", code], timeout=timeout)
        if out.returncode:
            raise RuntimeError(out.stdout + out.stderr)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # --- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> "NetnsCluster":
        os.makedirs(self.home, exist_ok=True)
        try:
            self._network()
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _network(self) -> None:
        a, b = self.ns
        for ns in self.ns:
            _sh(IP, "netns", "add", ns)
        _sh(IP, "link", "add", f"{a}v", "type", "veth", "peer", "name", f"{b}v")
        for ns, ip in zip(self.ns, self.ip):
            _sh(IP, "link", "set", f"{ns}v", "netns", ns)
            _sh(IP, "-n", ns, "addr", "add", f"{ip}/24", "dev", f"{ns}v")
            _sh(IP, "-n", ns, "link", "set", f"{ns}v", "up")
            _sh(IP, "-n", ns, "link", "set", "lo", "up")

    def _start(self) -> None:
        subprocess.Popen(self.command(moto_command(self.ip[0], 9000)), env=self.env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        # gloo finds a rank's address from the host name, which resolves to loopback here:
        # point it at the node's own interface, as on hosts with several interfaces
        head = self.run(["ray", "start", "--head", "--node-ip-address", self.ip[0], "--port", "6379",
                         "--dashboard-host", self.ip[0], "--dashboard-port", "8265", "--num-cpus", str(self.cpus[0]),
                         "--object-store-memory", str(200 * 2**20), "--temp-dir", self.temp_dirs[0],
                         "--disable-usage-stats"], timeout=180, GLOO_SOCKET_IFNAME=f"{self.ns[0]}v")
        if head.returncode:
            raise RuntimeError(f"ray start --head failed:\n{head.stdout}\n{head.stderr}")
        worker = self.run(["ray", "start", "--address", self.gcs, "--node-ip-address", self.ip[1],
                           "--num-cpus", str(self.cpus[1]), "--object-store-memory", str(200 * 2**20),
                           "--temp-dir", self.temp_dirs[1], "--resources", '{"node2": 1}', "--disable-usage-stats"],
                          node=1, timeout=180, GLOO_SOCKET_IFNAME=f"{self.ns[1]}v")
        if worker.returncode:
            raise RuntimeError(f"ray start --address failed:\n{worker.stdout}\n{worker.stderr}")
        self.python(f"import urllib.request, time; from s3server import wait_http; wait_http('{self.s3}'); "
                    "print('true')")
        self.wait_nodes(2)

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
                "print(json.dumps(sum(1 for x in ray.nodes() if x['Alive'])))")
        deadline = time.monotonic() + timeout
        while self.python(code) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not reach {n} nodes")
            time.sleep(1)

    def own_processes(self) -> list[psutil.Process]:
        """Every process inside the test's namespaces (so every one it started), by the
        inode of their network namespace."""
        inodes = set()
        for ns in self.ns:
            try:
                inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
            except FileNotFoundError:
                pass
        mine = []
        for p in psutil.process_iter():
            try:
                if os.stat(f"/proc/{p.pid}/ns/net").st_ino in inodes:
                    mine.append(p)
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                pass
        return mine

    def __exit__(self, *exc) -> None:
        for sig in ("terminate", "kill", "kill"):   # Ray restarts some agents while others stop
            procs = self.own_processes()
            if not procs:
                break
            for p in procs:
                try:
                    getattr(p, sig)()
                except psutil.NoSuchProcess:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in procs):
                time.sleep(0.2)
        for ns in self.ns:
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        shutil.rmtree(os.path.dirname(self.temp_dirs[0]), ignore_errors=True)


def _alive(p: psutil.Process) -> bool:
    """Running and not a zombie (psutil's wait can block on processes that are not our children)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
