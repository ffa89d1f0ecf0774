"""The per-run lock: one job writes a run; a second refuses or waits; a holder that lost its lease
(stopped past its TTL and taken over) cannot commit; the ranks of one torchrun job share the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.warehouse import lock
from pipeline.warehouse.lock import LeaseLost, RunLocked
from pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]

# holds the lock of run `r` until the file `go` appears, then does what it says: `release` or `commit`
HOLDER = r"""
import json, os, sys, time
from pathlib import Path
from pipeline.warehouse.lock import LeaseLost
from pipeline.warehouse import Warehouse
root, go = sys.argv[1], Path(sys.argv[2])
wh = Warehouse(root)
with wh.lock("r", "holder --run r") as lease:
    print(json.dumps({"token": lease.token, "job": lease.job}), flush=True)
    while not go.exists():
        time.sleep(0.02)
    if go.read_text() == "commit":
        try:
            wh.commit("r", "extract", 0, [])
        except LeaseLost as err:
            print("LOST", err, flush=True)
            sys.exit(3)
        print("COMMITTED", flush=True)
"""


class Holder:
    def __init__(self, tmp_path: Path, root: Path, name: str = "holder", **env: str):
        self.go = tmp_path / f"{name}.go"
        script = tmp_path / "holder.py"
        script.write_text(HOLDER)
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        self.proc = subprocess.Popen([sys.executable, str(script), str(root), str(self.go)], env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.info = json.loads(line)

    def tell(self, action: str) -> tuple[int, str]:
        tmp = self.go.with_suffix(".tmp")
        tmp.write_text(action)
        tmp.rename(self.go)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out + err


@pytest.fixture
def short_ttl(monkeypatch):
    monkeypatch.setenv("PIPELINE_LOCK_TTL_S", "1")
    return {"PIPELINE_LOCK_TTL_S": "1"}


def _lock_file(root: Path) -> dict:
    return json.loads((root / "_locks" / "run=r.json").read_text())


def test_second_job_refuses_at_once_naming_the_holder(tmp_path, short_ttl):
    root = tmp_path / "wh"
    holder = Holder(tmp_path, root, **short_ttl)
    try:
        time.sleep(2.5)  # more than twice the TTL: the holder's renewals keep its lease alive
        t0 = time.monotonic()
        with pytest.raises(RunLocked) as err, Warehouse(root).lock("r", "second"):
            pass
        assert time.monotonic() - t0 < 1.0
        msg = str(err.value)
        for part in ["'r'", "holder --run r", f"pid {holder.proc.pid}", socket.gethostname(), holder.info["job"],
                     "since", "wait for it or pass --wait"]:
            assert part in msg, (part, msg)
    finally:
        assert holder.tell("release")[0] == 0
    assert not (root / "_locks" / "run=r.json").exists()


def test_wait_gets_the_lock_after_release(tmp_path, short_ttl):
    root = tmp_path / "wh"
    holder = Holder(tmp_path, root, **short_ttl)
    with pytest.raises(RunLocked, match="waited 0.3 s"), Warehouse(root).lock("r", "w", wait=True, timeout_s=0.3):
        pass
    import threading

    threading.Timer(0.5, holder.tell, args=("release",)).start()
    t0 = time.monotonic()
    with Warehouse(root).lock("r", "waiter", wait=True, timeout_s=30) as lease:
        assert time.monotonic() - t0 >= 0.4
        assert lease.token == holder.info["token"] + 1
        assert _lock_file(root)["command"] == "waiter"
        Warehouse(root).commit("r", "extract", 0, [])
    assert holder.proc.wait(timeout=30) == 0


def test_stopped_holder_taken_over_cannot_commit(tmp_path, short_ttl):
    """SIGSTOP the holder past its TTL; another job takes over; SIGCONT: its commit raises LeaseLost
    and no commit record is written."""
    root = tmp_path / "wh"
    holder = Holder(tmp_path, root, **short_ttl)
    os.kill(holder.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        with Warehouse(root).lock("r", "new holder") as lease:
            assert lease.token == holder.info["token"] + 1
            tmp = holder.go.with_suffix(".tmp")
            tmp.write_text("commit")
            tmp.rename(holder.go)
            os.kill(holder.proc.pid, signal.SIGCONT)
            out, err = holder.proc.communicate(timeout=60)
            assert holder.proc.returncode == 3, out + err
            assert "LOST" in out and "nothing was committed; rerun" in out and "new holder" in out
            assert _lock_file(root)["token"] == lease.token  # its release left our lock alone
            assert Warehouse(root).commit_records("r") == {}
            Warehouse(root).commit("r", "extract", 0, [])
        assert list(Warehouse(root).commit_records("r")) == [("r", "extract", 0)]
    finally:
        if holder.proc.poll() is None:
            os.kill(holder.proc.pid, signal.SIGCONT)
            holder.proc.kill()


def test_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
    root = tmp_path / "wh"
    holder = Holder(tmp_path, root)  # default TTL (60 s): only the dead pid frees the lock
    holder.proc.kill()
    holder.proc.wait()
    with Warehouse(root).lock("r", "after a crash") as lease:
        assert lease.token == holder.info["token"] + 1
    assert "taking over a stale lock" in caplog.text


def test_ranks_of_one_job_share_the_lock(tmp_path, monkeypatch):
    root = tmp_path / "wh"
    job = {"TORCHELASTIC_RUN_ID": "3f2a-job"}
    rank0 = Holder(tmp_path, root, "rank0", **job)
    rank1 = Holder(tmp_path, root, "rank1", **job)
    assert rank0.info == rank1.info == {"token": 1, "job": "torchrun:3f2a-job"}
    assert len(_lock_file(root)["members"]) == 2
    with pytest.raises(RunLocked, match="torchrun:3f2a-job"), Warehouse(root).lock("r", "other job"):
        pass
    assert rank0.tell("release")[0] == 0
    assert len(_lock_file(root)["members"]) == 1  # rank 1 still holds it
    code, out = rank1.tell("commit")
    assert code == 0 and "COMMITTED" in out, out
    assert not (root / "_locks" / "run=r.json").exists()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "3f2a-job")
    with Warehouse(root).lock("r", "rerun") as lease:
        assert lease.token == 2  # the lock changed hands: a new token, even for the same job id


def test_nested_hold_in_one_process_shares_the_lease(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.lock("r", "outer") as outer:
        with wh.lock("r", "inner") as inner:
            assert inner is outer
        assert lock.held(tmp_path, "r") is outer
        wh.commit("r", "extract", 0, [])
    assert lock.held(tmp_path, "r") is None
    assert not (tmp_path / "_locks" / "run=r.json").exists()


def test_removed_lock_file_means_lease_lost(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.lock("r", "x"):
        (tmp_path / "_locks" / "run=r.json").unlink()
        with pytest.raises(LeaseLost, match="nobody"):
            wh.ensure_facts("r", {"a": 1})
        with pytest.raises(LeaseLost):
            wh.drop_run("r")
    assert wh.read_facts("r") is None


def test_strict_mode_refuses_writes_without_the_lock(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path)
    monkeypatch.setattr(lock, "STRICT", True)
    for write in (lambda: wh.commit("r", "extract", 0, []), lambda: wh.ensure_facts("r", {"a": 1}),
                  lambda: wh.drop_run("r")):
        with pytest.raises(RuntimeError, match="without holding the run lock"):
            write()
    with wh.lock("r", "x"):
        wh.ensure_facts("r", {"a": 1})
        wh.commit("r", "extract", 0, [])
    assert wh.read_facts("r")["a"] == 1


def test_job_id_under_torchrun(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert lock.job_id() == "torchrun:abc"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # multi-node torchrun without --rdzv-id
    monkeypatch.setenv("MASTER_ADDR", "node1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert lock.job_id() == "torchrun:node1:29500"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert lock.job_id().startswith("process:") and lock.job_id() == lock.job_id()
