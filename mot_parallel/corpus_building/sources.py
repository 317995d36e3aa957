"""Input files -> chunks of (where, raw document) for tools/preprocess_data.py's workers, streamed.

    for base_dir, chunk in work_items(paths, size): ...     # chunk: [(where, raw)], `size` documents at most

By extension: `.parquet` (pyarrow, record batches of `size` rows: memory stays a few batches, whatever the file's
size; only the mapped columns are read), `.tar` / `.tar.gz` / `.tgz` (webdataset shards, read as a stream: the
files of a sample are adjacent and share a key, the member name up to the first dot of its base name; a sample is
{extension: bytes}, `txt`/`text` decoded as UTF-8 and a `json` member's fields merged in), anything else JSONL
(bytes per line; the workers decode them). `where` names the file and the record (file:line, file: row N,
shard: sample 'key'); a truncated shard, a member that is not a regular file or a parquet file without a mapped
column is a DataError naming them.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from itertools import islice
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..data.indexed import DataError
from .jsonl import decode_line

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TEXT_MEMBERS = ("txt", "text")


def input_kind(path: str) -> str:
    low = path.lower()
    return "parquet" if low.endswith(".parquet") else "tar" if low.endswith(TAR_SUFFIXES) else "jsonl"


def work_items(paths: Sequence[str], size: int, columns: Optional[Dict[str, List[str]]] = None
               ) -> Iterator[Tuple[str, list]]:
    """(directory of the input file, [(where, raw)]) chunks of every input, in order; `columns`: the columns to
    read of each parquet file (parquet_columns)."""
    for path in paths:
        base_dir = os.path.dirname(os.path.abspath(path))
        records = {"parquet": lambda p: _parquet_rows(p, size, (columns or {}).get(p)), "tar": _tar_samples,
                   "jsonl": _jsonl_lines}[input_kind(path)](path)
        while True:
            chunk = list(islice(records, size))
            if not chunk:
                break
            yield base_dir, chunk


def _jsonl_lines(path: str):
    with open(path, "rb") as f:  # bytes: the workers decode each line, naming file:line if it is not UTF-8
        yield from ((f"{path}:{n}", line) for n, line in enumerate(f, 1) if line.strip())


def parquet_columns(path: str, wanted: Sequence[Sequence[str]]) -> List[str]:
    """The columns to read: for each mapped field (alternatives), those the file has; DataError (before any work)
    for a file that is not parquet or lacks every alternative of a field."""
    import pyarrow.parquet as pq
    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on a bad file
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None
    if "segments" in names:
        return ["segments"]
    out = []
    for alternatives in wanted:
        have = [n for n in alternatives if n in names]
        if not have:
            raise DataError(f"{path}: no column {','.join(alternatives)!r} (columns: {', '.join(names[:20])}); map "
                            "columns to segments with --json-keys")
        out += have
    return out


def _parquet_rows(path: str, size: int, columns: Optional[List[str]]):
    import pyarrow.parquet as pq
    row = 0
    try:
        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=size, columns=columns):
                for record in batch.to_pylist():
                    yield f"{path}: row {row}", record
                    row += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError; a cut file an OSError
        raise DataError(f"{path}: row {row}: unreadable ({str(e).splitlines()[0][:160]})") from None


def _tar_samples(path: str):
    """One {extension: value} record per webdataset sample, streamed."""
    key, sample, last, seen = None, {}, None, set()
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = member.name
                if not member.isfile():
                    raise DataError(f"{path}: member {name!r} is not a regular file (a link or device); a shard "
                                    "holds files only")
                base = os.path.basename(name)
                stem, dot, ext = base.partition(".")
                this = os.path.join(os.path.dirname(name), stem)
                if this != key:
                    if this in seen:  # its files are not adjacent: webdataset readers would split the sample too
                        raise DataError(f"{path}: sample {this!r} appears again at member {name!r}; the files of a "
                                        "sample must be adjacent in the shard")
                    seen.add(this)
                    if key is not None:
                        yield _sample(path, key, sample)
                    sample = {}
                key, last = this, name
                data = tar.extractfile(member).read()
                if dot and ext.lower() in sample:
                    raise DataError(f"{path}: sample {key!r}: two {ext!r} members (a shard holds one per sample)")
                sample[ext.lower() if dot else ""] = data
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt tar shard after {_member(last)} ({_reason(e)}); "
                        "re-create or re-download it") from None
    if key is not None:
        _check_end(path, end, last)
        yield _sample(path, key, sample)


def _member(last: Optional[str]) -> str:
    return f"member {last!r}" if last else "its start"


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def _check_end(path: str, offset: int, last: Optional[str]) -> None:
    """An uncompressed shard cut exactly at a member boundary reads as complete; its end-of-archive blocks do not
    lie: they must follow the last member."""
    if not path.lower().endswith(".tar"):
        return
    with open(path, "rb") as f:
        f.seek(offset)
        end = f.read(1024)
    if len(end) < 1024 or end.strip(b"\0"):
        raise DataError(f"{path}: truncated tar shard: no end-of-archive marker after {_member(last)} (the shard "
                        "was cut short); re-create or re-download it")


def _sample(path: str, key: str, members: dict):
    where = f"{path}: sample {key!r}"
    record = {}
    for ext, data in members.items():
        if ext in TEXT_MEMBERS:
            try:
                record[ext] = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: {ext}: not UTF-8 text (byte 0x{data[e.start]:02x} at {e.start})") from None
        elif ext == "json":
            fields = decode_line(data, f"{where}: json")
            if not isinstance(fields, dict):
                raise DataError(f"{where}: json: must be an object, got {type(fields).__name__}")
            record.update({k: v for k, v in fields.items() if k not in members})
        else:
            record[ext] = data
    return where, record
