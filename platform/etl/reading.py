"""Raw event files cut into pieces that Dask workers read independently.

A CSV file is cut into byte ranges of about `blocksize` (a piece owns the lines that start
inside its range); a parquet file into its row groups. Column types are decided once, from
the start of the first file, and imposed on every piece, so that all partitions agree and a
value that does not fit is an error naming its file and row rather than a silent re-typing.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

from rayrec.etl.inputs import InputError
from rayrec.storage import display, glob_files, is_uri, join, locate, open_parquet

_FORMATS = {".parquet": ("parquet", ""), ".pq": ("parquet", ""),
            ".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".tab": ("csv", "\t")}


@dataclass(frozen=True)
class Piece:
    path: str                 # a local path or a storage URI
    kind: str                 # csv or parquet
    sep: str = ","
    start: int = 0            # csv: byte range [start, end)
    end: int = 0
    row_groups: tuple = ()    # parquet: row groups to read


def expand_inputs(paths: list[str]) -> list[str]:
    """Files named, matched by globs, or inside directories; sorted, each at most once."""
    files: list[str] = []
    for p in paths:
        loc = locate(p) if is_uri(p) or not any(ch in os.path.basename(p) for ch in "*?[") else None
        if loc is not None and loc.is_dir():
            found = [join(p, i.base_name) if is_uri(p) else i.path for i in loc.list()
                     if i.type.name == "File" and _suffix(i.base_name) in _FORMATS]
        else:
            found = glob_files(p)
        if not found:
            raise FileNotFoundError(f"{display(p)}: no input files found (expected .parquet, .csv or .tsv)")
        files += found
    for f in files:
        if _suffix(f) not in _FORMATS:
            raise InputError(f"{f}: unknown input format; expected one of {sorted(_FORMATS)}")
    return list(dict.fromkeys(files))


def _suffix(path: str) -> str:
    return os.path.splitext(display(path))[1].lower()


def plan_pieces(files: list[str], blocksize: int) -> list[Piece]:
    pieces = []
    for f in files:
        kind, sep = _FORMATS[_suffix(f)]
        if kind == "parquet":
            meta = open_parquet(f).metadata
            groups, size = [], 0
            for g in range(meta.num_row_groups):
                groups.append(g)
                size += meta.row_group(g).total_byte_size
                if size >= blocksize:
                    pieces.append(Piece(f, kind, row_groups=tuple(groups)))
                    groups, size = [], 0
            if groups or meta.num_row_groups == 0:
                pieces.append(Piece(f, kind, row_groups=tuple(groups)))
        else:
            size = locate(f).size()
            starts = list(range(0, max(size, 1), blocksize))
            pieces += [Piece(f, kind, sep, s, min(s + blocksize, size)) for s in starts]
    return pieces


def file_columns(path: str) -> list[str]:
    kind, sep = _FORMATS[_suffix(path)]
    if kind == "parquet":
        return open_parquet(path).schema_arrow.names
    with _open(path) as f:
        header = _readline(f).decode().rstrip("\r\n")
    return [c.strip().strip('"') for c in header.split(sep)] if header else []


def check_columns(files: list[str], required: list[str]) -> None:
    """Fail before any work if a file lacks a column, naming the file and the column."""
    for f in files:
        cols = file_columns(f)
        missing = [c for c in required if c not in cols]
        if missing:
            raise InputError(f"{display(f)}: missing required column(s) {missing}; the file has {cols}")


def csv_types(path: str, sep: str, columns: list[str], numeric: list[str], sample_bytes: int = 1 << 20) -> dict:
    """Types for every piece of every CSV file, inferred once from the first MiB of `path`."""
    with _open(path) as f:
        head = f.read(sample_bytes)
    if len(head) == sample_bytes:
        head = head[: head.rfind(b"\n") + 1]
    t = pacsv.read_csv(io.BytesIO(head), parse_options=pacsv.ParseOptions(delimiter=sep),
                       convert_options=pacsv.ConvertOptions(include_columns=columns, timestamp_parsers=[]))
    types = {}
    for c in columns:
        typ = t.schema.field(c).type
        types[c] = pa.float64() if c in numeric else pa.string() if pa.types.is_null(typ) else typ
    return types


def read_piece(piece: Piece, columns: list[str], types: dict | None) -> pa.Table:
    """The piece's rows, only `columns`; a CSV piece whose values do not fit the types comes
    back as text, so that the caller's checks can name the first bad row exactly."""
    if piece.kind == "parquet":
        pf = open_parquet(piece.path)
        return pf.read_row_groups(list(piece.row_groups), columns=columns) if piece.row_groups else \
            pf.schema_arrow.empty_table().select(columns)
    header, body, _ = _csv_bytes(piece)
    opts = pacsv.ConvertOptions(include_columns=columns, column_types=types or {}, strings_can_be_null=True,
                                timestamp_parsers=[])
    parse = pacsv.ParseOptions(delimiter=piece.sep)
    read = pacsv.ReadOptions(use_threads=False)
    try:
        table = pacsv.read_csv(io.BytesIO(header + body), read_options=read, parse_options=parse, convert_options=opts)
    except pa.ArrowInvalid:
        text = pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns},
                                    strings_can_be_null=True)
        table = pacsv.read_csv(io.BytesIO(header + body), read_options=read, parse_options=parse, convert_options=text)
    return table


def first_row(piece: Piece) -> int:
    """File row number (0-based, header excluded) of the piece's first row; for error
    messages only, as it reads the file up to the piece."""
    if piece.kind == "parquet":
        meta = open_parquet(piece.path).metadata
        return sum(meta.row_group(g).num_rows for g in range(piece.row_groups[0])) if piece.row_groups else 0
    header, _, begin = _csv_bytes(piece)
    return _rows_before(piece.path, len(header), begin)


def _csv_bytes(piece: Piece) -> tuple[bytes, bytes, int]:
    """Header line, and the whole lines that start inside [start, end)."""
    with _open(piece.path) as f:
        header = _readline(f)
        begin = max(piece.start, len(header))
        if piece.start > len(header):
            f.seek(piece.start - 1)
            begin = piece.start - 1 + len(_readline(f))   # the line holding start-1 is the previous piece's
        if begin >= piece.end:
            return header, b"", begin
        f.seek(begin)
        body = f.read(piece.end - begin)
        if body and not body.endswith(b"\n"):
            body += _readline(f)
    return header, body, begin


def _open(path: str):
    loc = locate(path)
    return loc.fs.open_input_file(loc.path)


def _readline(f, chunk: int = 1 << 16) -> bytes:
    """The bytes up to and including the next newline (pyarrow files have no readline)."""
    start, parts = f.tell(), []
    while True:
        block = f.read(chunk)
        if not block:
            return b"".join(parts)
        cut = block.find(b"\n")
        if cut >= 0:
            parts.append(block[:cut + 1])
            f.seek(start + sum(len(p) for p in parts))
            return b"".join(parts)
        parts.append(block)


def _rows_before(path: str, header_len: int, offset: int) -> int:
    count, pos = 0, header_len
    with _open(path) as f:
        f.seek(pos)
        while pos < offset:
            chunk = f.read(min(1 << 24, offset - pos))
            if not chunk:
                break
            count += chunk.count(b"\n")
            pos += len(chunk)
    return count
