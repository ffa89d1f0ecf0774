"""Where the warehouse's bytes live: a local folder or an object store URL, behind the few calls the
commit protocol needs.

    Store("storage")                    a local folder (O_EXCL, link and flock give the guarantees)
    Store("s3://bucket/prefix")         S3 or any S3-compatible store, through s3fs
    Store("gs://bucket/prefix")         GCS through gcsfs; "az://container/prefix": Azure through adlfs

S3 credentials and endpoint come from the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) or the usual AWS config chain; nothing is written to disk.
Only S3 is tested here (against moto's server); gs:// and az:// go through fsspec the same way but
their conditional writes are not wired: a commit there refuses with a clear error.

The calls, all with paths relative to the warehouse root ('/'-separated):
    create(rel, data)             write only if absent (S3 `If-None-Match: *`; locally a link of a
                                  complete temp file, which fails if the name exists): False if taken
    read_tagged / replace(tag)    a conditional replace (S3 `If-Match: <etag>`; locally under an flock,
                                  the tag being a hash of the content)
    listdir(prefix)               every file under a folder, one listing
    open_output(rel)              a stream for a Parquet writer (S3: a multipart upload that appears,
                                  whole, at close)
    arrow_fs(), register(con)     pyarrow and DuckDB read through the same filesystem
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "memory")


class StoreError(RuntimeError):
    """The warehouse URL cannot be used (unreachable, no credentials, no bucket, no write permission)."""


def is_remote(url: str | os.PathLike) -> bool:
    text = str(url)
    return "://" in text and text.split("://", 1)[0] in REMOTE_SCHEMES


def _etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """The warehouse root: a local folder or an fsspec URL. Paths given to its methods are relative."""

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        self.remote = is_remote(text)
        if not self.remote:
            self.path = Path(text[len("file://"):] if text.startswith("file://") else text)
            self.url = str(self.path)
            self.fs = None
            self._resolved: str | None = None  # the absolute root, resolved once (uri() names every file)
            return
        import fsspec

        scheme, rest = text.split("://", 1)
        self.scheme = scheme
        self.base = rest.strip("/")
        self.url = f"{scheme}://{self.base}"
        self.path = None
        try:
            self.fs = fsspec.filesystem(scheme, **_options(scheme))
        except ImportError as err:
            raise StoreError(f"{self.url}: the {scheme}:// filesystem needs a package that is not installed "
                             f"({err}); install s3fs (s3://), gcsfs (gs://) or adlfs (az://)") from err

    # ---------------------------------------------------------------- names
    def full(self, rel: str) -> str:
        """The filesystem path of `rel` (a local path, or 'bucket/prefix/rel' for fsspec)."""
        if not self.remote:
            return str(self.path / rel)
        return f"{self.base}/{rel}" if rel else self.base

    def uri(self, rel: str) -> str:
        """What a reader opens: an absolute local path or a full URL."""
        if not self.remote:
            if self._resolved is None:
                self._resolved = self.path.resolve().as_posix().rstrip("/")
            return f"{self._resolved}/{rel}" if rel else self._resolved
        return f"{self.scheme}://{self.full(rel)}"

    # ---------------------------------------------------------------- reading
    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, None when it does not exist."""
        if not self.remote:
            try:
                return (self.path / rel).read_bytes()
            except FileNotFoundError:
                return None
        try:
            return self.fs.cat_file(self.full(rel))
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists() if not self.remote else self.fs.exists(self.full(rel))

    def size(self, rel: str) -> int:
        return (self.path / rel).stat().st_size if not self.remote else int(self.fs.size(self.full(rel)))

    def listdir(self, prefix: str) -> list[str]:
        """Every file under the folder `prefix` (recursive), relative to the root, sorted; [] if none."""
        if not self.remote:
            base = self.path / prefix
            out = []
            for dirpath, _, files in os.walk(base):
                rel_dir = Path(dirpath).relative_to(self.path).as_posix()
                out += [f"{rel_dir}/{name}" for name in files]
            return sorted(out)
        self.fs.invalidate_cache(self.full(prefix).rstrip("/"))  # other writers: never a cached listing
        try:
            found = self.fs.find(self.full(prefix).rstrip("/") + "/")
        except FileNotFoundError:
            return []
        cut = len(self.base) + 1
        return sorted(p[cut:] for p in found)

    # ---------------------------------------------------------------- writing
    def put(self, rel: str, data: bytes) -> None:
        """Write (or overwrite) a whole small object atomically."""
        if not self.remote:
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(path, data)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            return
        self.fs.pipe_file(self.full(rel), data)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if no object has that name: True if written, False if it existed."""
        if not self.remote:
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists: never a torn record
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
            return True
        return self._s3_put_if(rel, data, IfNoneMatch="*")

    def read_tagged(self, rel: str) -> tuple[bytes | None, str | None]:
        """(bytes, tag) of an object for a later `replace`; (None, None) when absent."""
        if not self.remote:
            data = self.read_bytes(rel)
            return (data, _etag_of(data)) if data is not None else (None, None)
        try:
            info = self.fs.info(self.full(rel), refresh=True)
        except FileNotFoundError:
            return None, None
        data = self.read_bytes(rel)
        tag = info.get("ETag") or info.get("etag")
        return data, tag

    def replace(self, rel: str, data: bytes, tag: str | None) -> bool:
        """Write `rel` only if it still holds what `read_tagged` returned with `tag` (None: only if
        absent). False when someone else changed it meanwhile."""
        if tag is None:
            return self.create(rel, data)
        if not self.remote:
            path = self.path / rel
            with flock(path.with_name(f".{path.name}.mutex")):
                current = self.read_bytes(rel)
                if current is None or _etag_of(current) != tag:
                    return False
                tmp = _write_temp(path, data)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
            return True
        return self._s3_put_if(rel, data, IfMatch=tag)

    def delete(self, rel: str) -> None:
        if not self.remote:
            (self.path / rel).unlink(missing_ok=True)
            return
        try:
            self.fs.rm_file(self.full(rel))
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        if not self.remote:
            import shutil

            shutil.rmtree(self.path / prefix, ignore_errors=True)
            return
        for rel in self.listdir(prefix):
            self.delete(rel)

    @contextmanager
    def open_output(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary stream for writing `rel` once: locally a temp file fsynced and renamed into place
        at the end of the block (removed on an exception); on S3 a multipart upload completed at the end,
        aborted on an exception, so the object appears whole or not at all."""
        if not self.remote:
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            fh = open(tmp, "wb")
            try:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
                os.replace(tmp, path)
                _fsync_dir(path.parent)
            except BaseException:
                fh.close()
                tmp.unlink(missing_ok=True)
                raise
            return
        fh = self.fs.open(self.full(rel), "wb", autocommit=False)
        try:
            yield fh
            fh.close()  # uploads the last part; nothing is visible yet
            fh.commit()  # one PUT, or completes the multipart upload
        except BaseException:
            try:
                fh.discard()  # aborts the multipart upload
            finally:
                fh.closed = True  # never let close() (or __del__) upload a partial file
            raise

    # ---------------------------------------------------------------- readers
    def arrow_fs(self):
        """A pyarrow filesystem over this store (pyarrow reads `full(rel)` paths through it)."""
        import pyarrow.fs as pafs

        if not self.remote:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def register(self, con) -> None:
        """Let DuckDB read `uri(rel)` URLs through this store's fsspec filesystem (no httpfs download)."""
        if self.remote:
            con.register_filesystem(self.fs)

    # ---------------------------------------------------------------- S3 details
    def _need_conditional_writes(self) -> None:
        if self.scheme != "s3":
            raise StoreError(f"{self.url}: conditional writes (commits, the lock) are implemented for s3:// and "
                             "local folders only; use an S3-compatible endpoint for this warehouse")

    def _s3_put_if(self, rel: str, data: bytes, **condition: str) -> bool:
        """A conditional PUT (`IfNoneMatch="*"`: only if absent; `IfMatch=tag`: only if unchanged): False when
        the condition does not hold (the object exists, or changed or vanished since it was read)."""
        self._need_conditional_writes()
        try:
            self._s3_put(rel, data, **condition)
        except FileExistsError:
            return False
        except FileNotFoundError:
            if "IfMatch" in condition:  # the object vanished since it was read; for a create: a missing bucket
                return False
            raise
        except OSError as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    def _s3_put(self, rel: str, data: bytes, **condition: str) -> None:
        bucket, key = self.full(rel).split("/", 1)
        self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        self.fs.invalidate_cache(self.full(rel))

    def check_usable(self) -> None:
        """One request that proves the URL can be written (bucket exists, credentials and permission):
        a StoreError naming the URL and what to check otherwise. Writes and removes one probe object."""
        if not self.remote:
            return
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(self.full(probe), b"")
            self.fs.rm_file(self.full(probe))
        except Exception as err:  # noqa: BLE001 - translated to one line below
            raise StoreError(describe_error(self.url, err)) from err


def describe_error(url: str, err: BaseException) -> str:
    """One line saying what is wrong with a warehouse URL and what to check."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if isinstance(err, FileNotFoundError) or "nosuchbucket" in low or "does not exist" in low:
        what = "the bucket does not exist: create it or fix the URL"
    elif isinstance(err, PermissionError) or "accessdenied" in low or "forbidden" in low or "403" in low:
        what = "access denied: check that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY may write this bucket"
    elif "credential" in low:
        what = "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
    elif "connect" in low or "endpoint" in low or "timed out" in low or "name resolution" in low:
        what = "the endpoint cannot be reached: check AWS_ENDPOINT_URL and the network"
    else:
        what = "check the URL, AWS_ENDPOINT_URL and the credentials"
    return f"warehouse {url}: {what} ({text.splitlines()[0][:200]})"


def _options(scheme: str) -> dict:
    if scheme != "s3":
        return {}
    opts: dict = {"client_kwargs": {}, "config_kwargs": {"connect_timeout": 5, "read_timeout": 30,
                                                         "retries": {"max_attempts": 2}}}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        opts["client_kwargs"]["region_name"] = region
    opts["skip_instance_cache"] = True
    return opts


def _precondition_failed(err: BaseException) -> bool:
    """A conditional PUT refused (412 PreconditionFailed, or 409 ConditionalRequestConflict: a concurrent one)."""
    cause = err.__cause__
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or "pre-conditions" in str(err)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (a short write is retried; none written is a full disk) and fsync."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[n:]
    os.fsync(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def flock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created) for the block; the kernel releases it if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
