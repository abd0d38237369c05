"""Locations of run artifacts: a local folder, or a URI (`s3://`, `gs://`) that every node of a cluster reads.

A location is a string. A local one is used as a path; a URI goes through the pyarrow filesystem its
scheme names (S3-compatible servers by query: `s3://bucket/prefix?endpoint_override=host:9000&scheme=http`).
Readers of a model or corpus at a URI work on a copy in this node's cache (`local_copy`); writers
stage a folder locally and upload it (`writable`). Nothing here assumes another node's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
UPLOADED = ".pedray-uploaded"


def is_uri(location: str | Path) -> bool:
    """True for a location on a remote filesystem (a scheme pyarrow knows, other than file://)."""
    return isinstance(location, str) and urlsplit(location).scheme in SCHEMES


def as_location(location: str | Path) -> str | Path:
    """A Path for a local location, the string itself for a URI."""
    return location if is_uri(location) else Path(location)


def join(location: str | Path, *parts: str) -> str | Path:
    """`location/part/...`, keeping a URI's query (the endpoint) at the end."""
    if not is_uri(location):
        return Path(location).joinpath(*parts)
    split = urlsplit(location)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def filesystem(location: str):
    """(pyarrow filesystem, path inside it) for a URI.

    An S3 filesystem is built here rather than by pyarrow's `from_uri` so that the caller's
    credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) are inside the object:
    pickled to a Ray worker, it needs nothing from that worker's environment. Elsewhere pyarrow's own
    credential chain applies (instance roles, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS).
    """
    import pyarrow.fs

    parts = urlsplit(location)
    if parts.scheme != "s3":
        return pyarrow.fs.FileSystem.from_uri(location)
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    keys = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
            "session_token": "AWS_SESSION_TOKEN"}
    options.update({k: os.environ[v] for k, v in keys.items() if os.environ.get(v)})
    for flag in ("allow_bucket_creation", "allow_bucket_deletion"):
        if flag in options:
            options[flag] = options[flag].lower() == "true"
    return pyarrow.fs.S3FileSystem(**options), f"{parts.netloc}{parts.path}".rstrip("/")


def arrow(location: str | Path) -> tuple[str, Any]:
    """(path, pyarrow filesystem or None) as Ray Data, Train and Tune take them: a URI's filesystem and
    its path inside it, or a local folder's absolute path and None."""
    if is_uri(location):
        fs, path = filesystem(location)
        return path, fs
    return str(Path(location).resolve()), None


def sibling(location: str | Path, name: str) -> str | Path:
    """The location of `name` in the same folder as `location`."""
    if not is_uri(location):
        return Path(location).with_name(name)
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, split.path.rsplit("/", 1)[0] + "/" + name, split.query, ""))


def size(location: str | Path) -> int:
    """The file's size in bytes; 0 when there is no such file."""
    if not is_uri(location):
        path = Path(location)
        return path.stat().st_size if path.is_file() else 0
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    return (info.size or 0) if info.is_file else 0


def read_text(location: str | Path) -> str | None:
    """The file's text, or None when there is no such file."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text(encoding="utf-8") if path.is_file() else None
    import pyarrow.fs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def read_json(location: str | Path) -> Any:
    text = read_text(location)
    return None if text is None else json.loads(text)


def write_text(location: str | Path, text: str) -> None:
    """Write a file whole: a local file through a rename, a remote one in one upload."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(text, encoding="utf-8")
        staging.replace(path)
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def _files(location: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under a URI, sorted."""
    import pyarrow.fs

    fs, root = filesystem(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted((i.path[len(root):].lstrip("/"), i.size, i.mtime_ns or 0)
                  for i in infos if i.type == pyarrow.fs.FileType.File)


def upload(folder: Path, location: str) -> None:
    """Copy a local folder's files to a URI (files already there under other names are left alone)."""
    import pyarrow.fs

    fs, root = filesystem(location)
    fs.create_dir(root, recursive=True)
    pyarrow.fs.copy_files(str(folder), root, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)


def publish(folder: Path, target: str) -> str:
    """`folder` uploaded to `target` once: a marker written after the upload says the copy is whole."""
    if read_text(join(target, UPLOADED)) is None:
        upload(folder, target)
        write_text(join(target, UPLOADED), "ok")
    return target


def remove(location: str | Path) -> None:
    """Delete a file, or a folder and everything under it (nothing happens when there is none)."""
    if not is_uri(location):
        import shutil

        path = Path(location)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    import pyarrow.fs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.File:
        fs.delete_file(path)
    elif kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)


def local_copy(location: str | Path) -> Path:
    """A local folder with the files of `location`: the folder itself, or this node's cached copy of a URI.

    The copy is keyed by the URI and its listing (names, sizes, times), so a folder rewritten at the
    same URI is fetched again; concurrent callers on one node share one complete copy.
    """
    if not is_uri(location):
        return Path(location)
    import pyarrow.fs

    from pedray.cache import build_once, cache_root

    listing = _files(location)
    if not listing:
        raise FileNotFoundError(f"nothing at {location}")
    key = hashlib.sha256(json.dumps([location, listing]).encode()).hexdigest()[:16]
    fs, root = filesystem(location)

    def fetch(out: Path) -> None:
        out.mkdir(parents=True)
        pyarrow.fs.copy_files(root, str(out), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        (out / ".pedray-copy").write_text(location, encoding="utf-8")

    return build_once(cache_root() / "remote" / key, fetch, ".pedray-copy")


@contextmanager
def writable(location: str | Path) -> Iterator[Path]:
    """A local folder to write `location`'s files into: the folder itself, or a staging folder that is
    uploaded to the URI when the block ends without an error (and removed either way)."""
    if not is_uri(location):
        path = Path(location)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pedray-upload-") as staging:
        yield Path(staging)
        upload(Path(staging), location)


def display(location: str | Path) -> str:
    """The location without its query (endpoint and options), for messages and manifests' readers."""
    if not is_uri(location):
        return str(location)
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, split.path, "", ""))
