"""Every writing command runs as one job: it holds its runs' locks (a second job stops at once naming
the holder, or waits with --wait), commits only under the lock, checks what it wrote and refreshes views.sql."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.warehouse import lock
from pipeline.cli import main
from pipeline.jobs import writing_job
from pipeline.warehouse import Warehouse
from pipeline.testing import make_timit

REPO = Path(__file__).resolve().parents[1]

HOLD = r"""
import sys, time
from pipeline.warehouse import Warehouse
with Warehouse(sys.argv[1]).lock(sys.argv[2], "python -m pipeline extract --run " + sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold(root: Path, run: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), run, str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def test_second_job_stops_at_once_naming_the_holder(tmp_path: Path, capsys) -> None:
    wh = tmp_path / "wh"
    holder = _hold(wh, "r", 30)
    try:
        started = time.monotonic()
        code = main(["ingest", "--format", "timit", "--corpus", str(make_timit(tmp_path / "timit")), "--run", "r",
                     "--warehouse", str(wh)])
        assert time.monotonic() - started < 10
        assert code == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert f"pid {holder.pid}" in err[0] and "--wait" in err[0] and "extract --run r" in err[0]
        assert Warehouse(wh).commit_records("r") == {}  # nothing of the second job was committed
    finally:
        holder.kill()
        holder.wait()


def test_wait_takes_the_run_when_the_holder_ends(tmp_path: Path, capsys) -> None:
    wh = tmp_path / "wh"
    holder = _hold(wh, "r", 2)
    try:
        corpus = make_timit(tmp_path / "timit")
        started = time.monotonic()
        code = main(["ingest", "--format", "timit", "--corpus", str(corpus), "--run", "r", "--warehouse", str(wh),
                     "--wait"])
        assert code == 0, capsys.readouterr().err
        assert time.monotonic() - started > 1.0  # it really waited for the holder's 2 s
        assert len(Warehouse(wh).commit_records("r", "ingest")) == 1
    finally:
        holder.kill()
        holder.wait()


def test_commits_inside_a_job_need_the_lock(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    with writing_job(wh.root, "ingest", ["a"], check=False):
        wh.commit("a", "ingest", 0, [])  # held: fine
        with pytest.raises(RuntimeError, match="without holding the run lock"):
            wh.commit("b", "ingest", 0, [])  # a run the job did not lock
    assert lock.STRICT is False  # restored after the job


def test_writing_command_refreshes_views_and_checks(tmp_path: Path, capsys) -> None:
    wh = tmp_path / "wh"
    assert main(["ingest", "--format", "timit", "--corpus", str(make_timit(tmp_path / "timit")), "--run", "r",
                 "--warehouse", str(wh)]) == 0
    script = (wh / "views.sql").read_text()
    [utterances] = Warehouse(wh).committed_files("utterances", "r")
    assert utterances.startswith("utterances/run=r/part-00000.") and utterances in script
    assert (wh / "_manifests" / "run=r.json").exists()  # compacted at the end of the job
    assert main(["check", "--warehouse", str(wh), "--run", "r"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "committed_files_exist" in out
    # a deleted committed file: check fails naming the file and the run
    [segments] = Warehouse(wh).committed_files("segments", "r")
    (wh / segments).unlink()
    assert main(["check", "--warehouse", str(wh)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and segments in out


def test_two_jobs_on_different_runs_do_not_block(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    holder = _hold(wh, "other", 30)
    try:
        corpus = make_timit(tmp_path / "timit")
        assert main(["ingest", "--format", "timit", "--corpus", str(corpus), "--run", "r", "--warehouse", str(wh)]) == 0
    finally:
        holder.kill()
        holder.wait()
