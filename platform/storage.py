"""Local paths and storage URIs alike: one way to reach a file wherever it lives.

Every stage takes a path or a URI (`s3://`, `gs://`, `abfs://`, `file://`, or any other
fsspec protocol) and reaches it through a pyarrow FileSystem. What crosses a process
boundary is the URI, never a FileSystem object: each process (a Dask or Ray worker on
another node) resolves it with its own credentials, so no secret is serialised or logged.
Credentials come from the usual places (the AWS chain, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_*); a custom S3 endpoint (MinIO, moto, Ceph) from AWS_ENDPOINT_URL.
"""
from __future__ import annotations

import fnmatch
import functools
import glob
import json
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow.fs as pafs

S3_CREDENTIALS = ("AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE "
                  "(default ~/.aws/credentials)", "AWS_CONFIG_FILE (default ~/.aws/config)",
                  "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI",
                  "the EC2 instance metadata service")
CREDENTIALS = {"s3": S3_CREDENTIALS,
               "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "~/.config/gcloud/application_default_credentials.json",
                      "the GCE metadata server"),
               "abfs": ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                        "AZURE_CLIENT_ID + AZURE_TENANT_ID + AZURE_CLIENT_SECRET", "a managed identity")}


class StorageError(ValueError):
    """A location that cannot be reached: says which, and where credentials were looked for."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """`base`/parts for a path or a URI (a URI's query string stays at the end)."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    head, _, query = str(base).partition("?")
    out = "/".join([head.rstrip("/"), *[p.strip("/") for p in parts if p]])
    return f"{out}?{query}" if query else out


def parent_and_name(uri: str) -> tuple[str, str]:
    if not is_uri(uri):
        path = os.path.abspath(uri)
        return os.path.dirname(path), os.path.basename(path)
    head, _, query = uri.partition("?")
    parent, _, name = head.rstrip("/").rpartition("/")
    return (f"{parent}?{query}" if query else parent), name


def display(uri: str) -> str:
    """A location for messages: the query string (which may carry options) left out."""
    return str(uri).partition("?")[0]


@dataclass(frozen=True)
class Location:
    """A file or directory: its filesystem and its path inside it."""
    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return Location(join(self.uri, *parts), self.fs, "/".join([self.path.rstrip("/"), *parts]))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def size(self) -> int:
        return self.info().size

    def list(self, recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under this directory (none if it does not exist), sorted by path."""
        if not self.is_dir():
            return []
        return sorted(self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive)),
                      key=lambda i: i.path)

    def names(self) -> list[str]:
        return [i.base_name for i in self.list()]

    def files(self, suffix: str = "") -> list[str]:
        """Paths (inside the filesystem) of the files directly under this directory."""
        return [i.path for i in self.list() if i.type == pafs.FileType.File and i.base_name.endswith(suffix)]

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_json(self):
        return json.loads(self.read_bytes())

    def write_bytes(self, data: bytes) -> None:
        """One object (or file) written whole: on an object store a PUT is atomic."""
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_json(self, value, indent: int | None = 2) -> None:
        self.write_bytes(json.dumps(value, indent=indent).encode())

    def delete(self) -> None:
        """Remove this file or directory tree; a missing one is fine."""
        t = self.info().type
        if t == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif t == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def download(self, dest: str) -> str:
        """Copy this directory tree to the local directory `dest`."""
        os.makedirs(dest, exist_ok=True)
        pafs.copy_files(self.path, dest, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return dest

    def upload(self, local_dir: str) -> None:
        """Copy the local directory tree `local_dir` to this location."""
        pafs.copy_files(local_dir, self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


def locate(path: str, check: bool = True) -> Location:
    """The Location of a path or URI. For a URI the store is reached once (cached per
    process) and an unreachable one fails here, naming the URI and the credentials."""
    path = str(path)
    if not is_uri(path):
        return Location(os.path.abspath(path), pafs.LocalFileSystem(), os.path.abspath(path))
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if scheme == "file":
        local = parts.path
        return Location(path, pafs.LocalFileSystem(), local)
    try:
        fs = _filesystem(scheme, parts.netloc, parts.query, check)
    except StorageError as e:
        raise StorageError(f"{display(path)}: {e}") from None
    inner = f"{parts.netloc}{parts.path}".rstrip("/") if scheme in ("s3", "gs", "gcs") else \
        _inner_path(fs, path)
    return Location(path, fs, inner)


def _inner_path(fs: pafs.FileSystem, uri: str) -> str:
    if isinstance(fs, pafs.PyFileSystem):
        return fs.handler.fs._strip_protocol(uri.partition("?")[0])
    return pafs.FileSystem.from_uri(uri)[1]


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, netloc: str, query: str, check: bool) -> pafs.FileSystem:
    uri = f"{scheme}://{netloc}/" + (f"?{query}" if query else "")
    if scheme == "s3" and check:
        check_s3_credentials(uri)
    try:
        fs = pafs.FileSystem.from_uri(uri)[0]
    except ValueError as e:   # pyarrow knows no such scheme (ArrowInvalid is a ValueError)
        fs = _fsspec(scheme, uri, e)
    except OSError as e:      # a scheme pyarrow knows, a store it cannot reach (region, endpoint, network)
        if scheme not in ("s3", "gs", "gcs", "abfs", "abfss", "az"):
            fs = _fsspec(scheme, uri, e)
        else:
            raise StorageError(f"cannot reach the store: {str(e).splitlines()[0][:300]}. "
                               + where_credentials(scheme)) from None
    if check and scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az"):
        probe(fs, uri, scheme, netloc)
    return fs


def _fsspec(scheme: str, uri: str, error: Exception) -> pafs.FileSystem:
    """Protocols pyarrow has no native filesystem for, through fsspec (if it knows them)."""
    try:
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as e:
        raise StorageError(f"no filesystem for {scheme}:// ({error}; fsspec: {e})") from None


def probe(fs: pafs.FileSystem, uri: str, scheme: str, bucket: str) -> None:
    """Reach the bucket once, so that a wrong endpoint, bucket or credential fails at the
    start with the URI named, not deep inside a worker."""
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise StorageError(f"cannot reach the bucket {bucket!r}: {str(e).splitlines()[0][:300]}. "
                           + where_credentials(scheme)) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"bucket {bucket!r} does not exist (or these credentials cannot see "
                           f"it). {where_credentials(scheme)}")


def where_credentials(scheme: str) -> str:
    looked = CREDENTIALS.get("abfs" if scheme in ("abfss", "az") else "gs" if scheme == "gcs" else scheme)
    endpoint = " A custom S3 endpoint comes from AWS_ENDPOINT_URL" + \
        (f" (now {os.environ['AWS_ENDPOINT_URL']})." if os.environ.get("AWS_ENDPOINT_URL") else " (unset).") \
        if scheme == "s3" else ""
    return (f"Credentials are read from: {'; '.join(looked)}." if looked else "") + endpoint


def check_s3_credentials(uri: str) -> None:
    """Fail before any work when no source of AWS credentials exists on this machine
    (checked without reading any secret); `?anonymous=true` in the URI skips it."""
    if "anonymous=true" in uri.lower():
        return
    env = os.environ
    home = os.path.expanduser("~")
    sources = [env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_PROFILE"),
               env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
               env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
               os.path.exists(env.get("AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, ".aws", "credentials"))),
               os.path.exists(env.get("AWS_CONFIG_FILE", os.path.join(home, ".aws", "config")))]
    if any(sources) or _instance_metadata_reachable():
        return
    raise StorageError(f"no AWS credentials found. {where_credentials('s3')} "
                       "For a public bucket add ?anonymous=true to the URI.")


def _instance_metadata_reachable() -> bool:
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return False
    try:
        with socket.create_connection(("169.254.169.254", 80), timeout=0.3):
            return True
    except OSError:
        return False


def glob_files(pattern: str) -> list[str]:
    """Files matching a glob (`*`, `?`, `[..]` in the last part) as full paths or URIs, sorted."""
    if not is_uri(pattern):
        return sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    parent, name = parent_and_name(pattern)
    if not any(ch in name for ch in "*?["):
        loc = locate(pattern)
        return [loc.uri] if loc.is_file() else []
    base = locate(parent)
    return [join(parent, i.base_name) for i in base.list()
            if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, name)]


def open_parquet(uri: str):
    """A pyarrow ParquetFile at a path or URI (row groups are then read on demand)."""
    import pyarrow.parquet as pq

    loc = locate(uri)
    return pq.ParquetFile(loc.path) if loc.local else pq.ParquetFile(loc.path, filesystem=loc.fs)


def write_parquet(table, uri: str, **options) -> None:
    import pyarrow.parquet as pq

    loc = locate(uri)
    if loc.local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
    pq.write_table(table, loc.path, filesystem=loc.fs, **options)


def parquet_writer(uri: str, schema):
    import pyarrow.parquet as pq

    loc = locate(uri)
    if loc.local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
    return pq.ParquetWriter(loc.path, schema, filesystem=loc.fs)
