"""One writing job per run: a lease with a fencing token, shared by the ranks of one torchrun job.

    _locks/run=<run>.json    the lease: job, command, pid, host, started, expires, token, members
    _locks/run=<run>.token   the last token handed out (durable, only ever grows)
    _locks/run=<run>.mutex   flock'd for the few milliseconds of each read-modify-write of the two above

Every change to the lease happens under the mutex (an flock, released by the kernel when its holder
dies) and is written to a temp file, fsynced and renamed, so a reader sees a whole lease or none.
The mutex, not O_EXCL, makes a takeover safe: two jobs that both see a stale lease cannot both take it.

A lease is renewed every TTL/3 by a background thread. One that is not renewed for TTL (its holder
stopped or hung), or whose members on this host are all dead, may be taken over: the new holder gets
the next token. The old holder then finds another token in the lease at its next commit and raises
`LeaseLost` instead of writing (the warehouse checks under the mutex, at the moment of writing).
Expiry compares wall clocks: hosts sharing a warehouse need clocks in sync to well under the TTL.

On an object store (s3://) there is no flock: the lease is one object, `_locks/run=<run>.json`, and
every change is a conditional write (`If-Match` on the ETag read, `If-None-Match: *` to create), so
two jobs that both see a stale lease cannot both take it: one write fails and that job re-reads.
Releasing leaves the object marked released, so tokens only grow. A commit checks the lease just
before creating its commit object, but the check and the create are two requests: a holder stopped
between them can still create its commit after a takeover. Such a commit carries the old token, and
readers never let it supersede a commit of a newer token (Warehouse._newer): the new holder's work
always wins; what can land is a stale holder's complete, verified shard of the same run facts that
the new holder has not committed yet, which the new holder's own commit of that shard supersedes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

STRICT = False  # True: committing, writing facts or dropping a run without holding its lock is an error
MUTEX_TIMEOUT_S = 30.0  # each critical section takes milliseconds; 30 s means a holder stopped inside one
_PROCESS_JOB = uuid.uuid4().hex  # this process's job id when not under torchrun


class RunLocked(RuntimeError):
    """Another job holds the run's lock."""


class LeaseLost(RuntimeError):
    """This process's lease on a run was taken over (it expired while we were stopped): do not write."""


def ttl_s() -> float:
    return float(os.environ.get("PIPELINE_LOCK_TTL_S", "60"))


def job_id() -> str:
    """Same for every rank of one torchrun job: its rendezvous id (a uuid with --standalone or a single
    node). Multi-node torchrun without --rdzv-id reports 'none': then the master's address and port,
    unique among running jobs. Outside torchrun, one id per process."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun:{run_id}"
    if run_id == "none" and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return f"torchrun:{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return f"process:{_PROCESS_JOB}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@dataclass
class Lease:
    """This process's share of a run's lock."""
    root: Path | str
    run: str
    job: str
    command: str
    token: int
    lost: bool = False
    store: object | None = None  # an object store's pipeline.warehouse.fs.Store; None: a local folder
    pid: int = field(default_factory=os.getpid)  # a forked child inherits the registry, not the lease
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return _paths(self.root, self.run)[0]

    def check(self, doing: str = "write") -> None:
        """Raise LeaseLost unless the lease on disk still carries our token. Call under `_mutex` (locally)."""
        holder = _read(self.path) if self.store is None else _remote_read(self.store, self.run)[0]
        if holder and holder.get("released"):
            holder = None
        if holder is None or holder.get("token") != self.token:
            self.lost = True
            now = (f"job {holder['job']} ({holder['command']}, pid {holder['pid']} on {holder['host']}, "
                   f"token {holder['token']})" if holder else "nobody (the lock was removed)")
            raise LeaseLost(
                f"run {self.run!r} in {self.root}: this process ({self.command}, token {self.token}) lost its lock "
                f"(its lease expired, e.g. while the process was stopped) and it is now held by {now}. "
                f"Refused to {doing}: nothing was committed; rerun."
            )


# (resolved root, run) -> this process's lease
_HELD: dict[tuple[str, str], Lease] = {}
_HELD_LOCK = threading.Lock()


def _paths(root: Path, run: str) -> tuple[Path, Path, Path]:
    base = root / "_locks"
    return base / f"run={run}.json", base / f"run={run}.token", base / f"run={run}.mutex"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: treated as a stale lease (every write of ours is a whole-file rename)


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        data = json.dumps(obj, sort_keys=True).encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextmanager
def _mutex(root: Path, run: str) -> Iterator[None]:
    path = _paths(root, run)[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + MUTEX_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunLocked(f"run {run!r} in {root}: {path} stayed locked for {MUTEX_TIMEOUT_S:.0f} s "
                                    "(a process stopped while changing the lock?); find it with `fuser` and "
                                    "resume or end it, then retry") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the flock


def _stale(holder: dict, now: float) -> bool:
    """Expired, unreadable, or every member on this host and dead."""
    if not holder or holder.get("expires", 0) < now:
        return True
    members = holder.get("members", [])
    host = socket.gethostname()
    return bool(members) and all(m["host"] == host and not _pid_alive(m["pid"]) for m in members)


def _describe(holder: dict, run: str, root: Path) -> str:
    return (f"run {run!r} in {root} is locked by {holder.get('command', '?')!r} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, job {holder.get('job')}) since {_iso(holder.get('started', 0))}, lease "
            f"renewed until {_iso(holder.get('expires', 0))}: wait for it or pass --wait")


def _try_acquire(root: Path, run: str, command: str, job: str) -> tuple[int | None, dict | None]:
    """(token, None) when acquired or joined; (None, holder) when another job holds the lease."""
    lock_path, token_path, _ = _paths(root, run)
    now, ttl = time.time(), ttl_s()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now}
    with _mutex(root, run):
        holder = _read(lock_path)
        if holder and holder.get("job") == job and not _stale(holder, now):
            holder["members"] = [*holder.get("members", []), me]
            holder["expires"] = now + ttl
            _write(lock_path, holder)
            return holder["token"], None
        if holder is not None and not _stale(holder, now):
            return None, holder
        if holder:
            log.warning("run %r: taking over a stale lock of %r (pid %s on %s, job %s, lease expired %s)",
                        run, holder.get("command"), holder.get("pid"), holder.get("host"), holder.get("job"),
                        _iso(holder.get("expires", 0)))
        last = _read(token_path) or {}
        token = max(last.get("token", 0), (holder or {}).get("token", 0)) + 1
        _write(token_path, {"token": token})
        _write(lock_path, {"job": job, "command": command, "token": token, "started": now, "expires": now + ttl,
                           **{k: me[k] for k in ("pid", "host")}, "members": [me]})
        return token, None


def _renew(lease: Lease) -> None:
    """Push the lease's expiry forward every TTL/3 while our token is in it."""
    while not lease._stop.wait(ttl_s() / 3):
        try:
            with _mutex(lease.root, lease.run):
                holder = _read(lease.path)
                if not holder or holder.get("token") != lease.token:
                    lease.lost = True
                    log.error("run %r: lost the lock (token %d): the next commit will be refused",
                              lease.run, lease.token)
                    return
                holder["expires"] = time.time() + ttl_s()
                _write(lease.path, holder)
        except Exception as err:  # noqa: BLE001 - a failed renewal is retried; expiry is the fallback
            log.warning("run %r: could not renew the lock: %s", lease.run, err)


def _release(lease: Lease) -> None:
    """Leave the lease; the last member removes the lock file, if it still holds our token."""
    with _mutex(lease.root, lease.run):
        holder = _read(lease.path)
        if not holder or holder.get("token") != lease.token:
            return
        me = (os.getpid(), socket.gethostname())
        members = [m for m in holder.get("members", []) if (m["pid"], m["host"]) != me]
        if members:
            _write(lease.path, {**holder, "members": members})
        else:
            lease.path.unlink()


def _key(root: Path | str, run: str) -> tuple[str, str]:
    return (root if isinstance(root, str) and "://" in root else str(Path(root).resolve())), run


@contextmanager
def hold(root: Path | str, run: str, command: str, wait: bool = False, timeout_s: float | None = None,
         store=None) -> Iterator[Lease]:
    """Hold the run's lock for the `with` block: refuse at once (RunLocked) if another job holds it,
    or poll until it is free with `wait` (RunLocked after `timeout_s`, if given)."""
    key = _key(root, run)
    lease = held(root, run)
    if lease is not None:  # nested in a block of this process that holds it already
        yield lease
        return
    remote = store if store is not None and getattr(store, "remote", False) else None
    job, started = job_id(), time.monotonic()
    while True:
        if remote is not None:
            token, holder = _remote_try_acquire(remote, run, command, job)
        else:
            token, holder = _try_acquire(Path(root), run, command, job)
        if token is not None:
            break
        if not wait:
            raise RunLocked(_describe(holder, run, Path(root)))
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise RunLocked(f"waited {timeout_s:g} s; " + _describe(holder, run, Path(root)))
        time.sleep(min(1.0, ttl_s() / 6))
    lease = Lease(Path(root) if remote is None else root, run, job, command, token, store=remote)
    renew = _renew if remote is None else _remote_renew
    lease._thread = threading.Thread(target=renew, args=(lease,), name=f"lock-renew-{run}", daemon=True)
    lease._thread.start()
    with _HELD_LOCK:
        _HELD[key] = lease
    try:
        yield lease
    finally:
        lease._stop.set()
        with _HELD_LOCK:
            _HELD.pop(key, None)
        _release(lease) if remote is None else _remote_release(lease)


def held(root: Path | str, run: str) -> Lease | None:
    """This process's lease on the run, if it holds one."""
    lease = _HELD.get(_key(root, run))
    return lease if lease is not None and lease.pid == os.getpid() else None


def fence(root: Path, run: str, doing: str):
    """Context for a write that must happen only under the run's lock: holds the mutex and checks our
    token (LeaseLost otherwise), so no takeover can slip between the check and the write. Without a
    lease: an error in STRICT mode, else no check (commands not yet wired to the lock)."""
    lease = held(root, run)
    if lease is None:
        if STRICT:
            raise RuntimeError(f"run {run!r} in {root}: {doing} without holding the run lock "
                               "(wrap the command in Warehouse.lock(run, command))")
        return nullcontext()
    return _fenced(lease, doing)


@contextmanager
def _fenced(lease: Lease, doing: str) -> Iterator[Lease]:
    if lease.store is not None:  # no mutex on an object store: the token in the commit is the fence
        lease.check(doing)
        yield lease
        return
    with _mutex(lease.root, lease.run):
        lease.check(doing)
        yield lease


# ---------------------------------------------------------------- the lease as one object (s3://)
def _remote_rel(run: str) -> str:
    return f"_locks/run={run}.json"


def _remote_read(store, run: str) -> tuple[dict | None, str | None]:
    data, tag = store.read_tagged(_remote_rel(run))
    if data is None:
        return None, None
    try:
        return json.loads(data), tag
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}, tag  # unreadable: a stale lease


def _remote_try_acquire(store, run: str, command: str, job: str) -> tuple[int | None, dict | None]:
    """Like _try_acquire, with a conditional write instead of the mutex: a lost write re-reads."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(50):
        now, ttl = time.time(), ttl_s()
        holder, tag = _remote_read(store, run)
        live = holder and not holder.get("released") and not _stale(holder, now)
        if live and holder.get("job") == job:
            new = {**holder, "members": [*holder.get("members", []), me], "expires": now + ttl}
            if store.replace(_remote_rel(run), json.dumps(new, sort_keys=True).encode(), tag):
                return holder["token"], None
            continue
        if live:
            return None, holder
        if holder and not holder.get("released"):
            log.warning("run %r: taking over a stale lock of %r (pid %s on %s, job %s, lease expired %s)",
                        run, holder.get("command"), holder.get("pid"), holder.get("host"), holder.get("job"),
                        _iso(holder.get("expires", 0)))
        token = (holder or {}).get("token", 0) + 1
        new = {"job": job, "command": command, "token": token, "started": now, "expires": now + ttl,
               "pid": me["pid"], "host": me["host"], "members": [me]}
        if store.replace(_remote_rel(run), json.dumps(new, sort_keys=True).encode(), tag):
            return token, None
    raise RunLocked(f"run {run!r} in {store.url}: the lock object kept changing under 50 attempts; retry")


def _remote_renew(lease: Lease) -> None:
    while not lease._stop.wait(ttl_s() / 3):
        try:
            holder, tag = _remote_read(lease.store, lease.run)
            if not holder or holder.get("released") or holder.get("token") != lease.token:
                lease.lost = True
                log.error("run %r: lost the lock (token %d): the next commit will be refused", lease.run, lease.token)
                return
            holder["expires"] = time.time() + ttl_s()
            if not lease.store.replace(_remote_rel(lease.run), json.dumps(holder, sort_keys=True).encode(), tag):
                log.info("run %r: the lease changed while renewing (a member joined or left); retrying", lease.run)
        except Exception as err:  # noqa: BLE001 - a failed renewal is retried; expiry is the fallback
            log.warning("run %r: could not renew the lock: %s", lease.run, err)


def _remote_release(lease: Lease) -> None:
    """Leave the lease; the last member marks it released (the object stays: tokens only grow)."""
    me = (os.getpid(), socket.gethostname())
    for _ in range(50):
        holder, tag = _remote_read(lease.store, lease.run)
        if not holder or holder.get("token") != lease.token or holder.get("released"):
            return
        members = [m for m in holder.get("members", []) if (m["pid"], m["host"]) != me]
        new = {**holder, "members": members} if members else {"token": lease.token, "released": True,
                                                               "released_at": time.time()}
        if lease.store.replace(_remote_rel(lease.run), json.dumps(new, sort_keys=True).encode(), tag):
            return


def command_line() -> str:
    """What a lock names as its holder's command."""
    return " ".join(["python -m pipeline", *sys.argv[1:]])[:300]
