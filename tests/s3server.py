"""A real S3-compatible server on 127.0.0.1 for tests: moto's standalone server (the one
s3fs's own tests use), started and stopped by pid, reached through AWS_ENDPOINT_URL."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def moto_command(host: str, port: int) -> list[str]:
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    return [exe, "-H", host, "-p", str(port)]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return   # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class S3Server:
    """`with S3Server() as s3:` -> s3.env (credentials + endpoint), s3.make_bucket(name)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host, self.port = host, free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "rayrec-test", "AWS_SECRET_ACCESS_KEY": "rayrec-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                    "AWS_EC2_METADATA_DISABLED": "true"}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "S3Server":
        self.proc = subprocess.Popen(moto_command(self.host, self.port), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_http(self.endpoint)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def make_bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                               endpoint_override=self.endpoint, region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"
