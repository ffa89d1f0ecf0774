"""The warehouse under damage: short writes, damaged facts, damaged committed files, awkward names.
Each ends in the exact rows or a clear error; never a silent loss, and other runs stay queryable."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import warehouse as warehouse_module
from pipeline.sql import parse_param, query
from pipeline.warehouse import DamagedFacts, Warehouse, check_run_name

REPO = Path(__file__).resolve().parents[1]
TOY = pa.schema([("utterance_id", pa.string()), ("frame", pa.int32()), ("vector", pa.list_(pa.float16(), 4))])


def toy(n: int, start: int = 0) -> pa.Table:
    return pa.table({"utterance_id": [f"u{i // 10}" for i in range(start, start + n)],
                     "frame": pa.array(range(start, start + n), pa.int32()),
                     "vector": pa.array([[i, 0, 0, 1] for i in range(start, start + n)], TOY.field("vector").type)},
                    schema=TOY)


def commit_toy(wh: Warehouse, run: str, shard: int, n: int) -> None:
    wh.commit(run, "toy", shard, [wh.write("toy", toy(n, 100 * shard), run, shard)])


def count(wh: Warehouse, run: str) -> int:
    return wh.connect().execute("select count(*) from toy where run = ?", [run]).fetchone()[0]


# ---------------------------------------------------------------- streaming writer
def test_streaming_writer_gives_the_file_of_one_write(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path)
    monkeypatch.setattr(warehouse_module, "ROW_GROUP_ROWS", 64)
    whole = wh.write("toy", toy(300), "a", 0)
    with wh.open_writer("toy", "a", 1, TOY) as writer:
        for batch in toy(300).to_batches(max_chunksize=7):
            writer.write(batch)
        streamed = writer.close()
    assert streamed.rows == whole.rows == 300
    a, b = pq.ParquetFile(tmp_path / whole.path), pq.ParquetFile(tmp_path / streamed.path)
    assert a.read().equals(b.read())
    assert [b.metadata.row_group(i).num_rows for i in range(b.metadata.num_row_groups)] == [64, 64, 64, 64, 44]
    assert b.metadata.row_group(0).column(1).statistics.has_min_max
    assert not list((tmp_path / "_tmp").iterdir())


def test_streaming_writer_bounds_row_groups_by_bytes(tmp_path):
    with Warehouse(tmp_path).open_writer("toy", "a", 0, TOY, row_group_bytes=1000) as writer:  # ~100 rows of TOY
        for batch in toy(1000).to_batches(max_chunksize=30):
            writer.write(batch)
            assert writer._buffered_bytes < 2000  # nothing accumulates past one row group
        record = writer.close()
    md = pq.read_metadata(tmp_path / record.path)
    assert md.num_rows == 1000 and md.num_row_groups >= 8


def test_streaming_writer_aborts_on_error(tmp_path):
    wh = Warehouse(tmp_path)
    with pytest.raises(KeyError), wh.open_writer("toy", "a", 0, TOY) as writer:
        writer.write(toy(10))
        raise KeyError("model failed")
    with pytest.raises(ValueError, match="schema"), wh.open_writer("toy", "a", 0, TOY) as writer:
        writer.write(toy(10).drop_columns(["frame"]))
    assert not list((tmp_path / "_tmp").iterdir())
    assert not (tmp_path / "toy").exists() or not list((tmp_path / "toy").rglob("*.parquet"))


# ---------------------------------------------------------------- commit durability
FSIZE_SCRIPT = r"""
import resource, signal, sys
from pipeline.warehouse import Warehouse
wh = Warehouse(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
wh.commit("a", "toy", 1, [], padding="x" * 200)
"""


def commit_objects(root: Path, run: str = "a") -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "_commits" / f"run={run}").rglob("*")
                  if p.is_file())


def test_commit_under_a_file_size_limit_fails_and_leaves_no_torn_record(tmp_path):
    wh = Warehouse(tmp_path)
    commit_toy(wh, "a", 0, 10)
    before = commit_objects(tmp_path)
    assert before == ["_commits/run=a/toy/00000.000001.json"]
    script = tmp_path / "fsize.py"
    script.write_text(FSIZE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode != 0
    assert "could not write the commit record of shard 1 of toy (run 'a')" in done.stderr
    assert "nothing was committed" in done.stderr and "File too large" in done.stderr
    assert commit_objects(tmp_path) == before  # no torn commit object, no temp file left
    commit_toy(wh, "a", 1, 10)  # a later commit is read
    assert sorted(s for (_, _, s) in wh.commits("a")) == [0, 1]


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(warehouse_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    wh = Warehouse(tmp_path)
    commit_toy(wh, "a", 0, 10)
    wh.ensure_facts("a", {"model": "m"})
    monkeypatch.undo()
    assert list(wh.commits("a")) == [("a", "toy", 0)]
    assert wh.read_facts("a")["model"] == "m"


def test_a_failed_facts_write_keeps_the_old_facts(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path)
    wh.ensure_facts("a", {"model": "m"})
    before = wh.facts_path("a").read_bytes()

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(warehouse_module.os, "write", full_disk)
    with pytest.raises(OSError, match="could not write the facts of run 'a'.*No space left"):
        wh.ensure_facts("a", {"model": "m", "layers": [1]})
    assert wh.facts_path("a").read_bytes() == before
    assert not list((tmp_path / "_tmp").iterdir())


# ---------------------------------------------------------------- damaged facts
@pytest.mark.parametrize("content", ["", "{\"model\": ", "[1, 2]"])
def test_damaged_facts_leave_other_runs_queryable(tmp_path, caplog, content):
    wh = Warehouse(tmp_path)
    for run in ("a", "b"):
        wh.ensure_facts(run, {"model": "m"})
        commit_toy(wh, run, 0, 10)
    wh.facts_path("a").write_text(content)
    con = wh.connect()
    assert con.execute("select run from runs").fetchall() == [("b",)]
    assert count(wh, "b") == 10
    assert "'a'" in caplog.text and "--overwrite" in caplog.text
    with pytest.raises(DamagedFacts, match=r"run 'a'.*rerun the run's first stage with --overwrite") as err:
        wh.read_facts("a")
    assert str(wh.facts_path("a")) in str(err.value)
    with pytest.raises(DamagedFacts):
        wh.ensure_facts("a", {"model": "m"})
    wh.drop_run("a")  # what --overwrite does
    wh.ensure_facts("a", {"model": "m"})


# ---------------------------------------------------------------- damaged committed files
def committed_path(wh: Warehouse, run: str, shard: int) -> Path:
    [rec] = [r for (r_, _, s), r in wh.commit_records(run).items() if s == shard]
    return wh.root / rec["files"][0]["path"]


def test_damaged_files_are_found_by_resume_and_named_by_readers(tmp_path, caplog):
    wh = Warehouse(tmp_path)
    for shard in range(3):
        commit_toy(wh, "a", shard, 10)
    commit_toy(wh, "b", 0, 10)
    deleted = committed_path(wh, "a", 0)
    deleted.unlink()
    replaced = committed_path(wh, "a", 1)
    pq.write_table(toy(4), replaced)
    assert [(d.run, d.stage, d.shard, d.rows_expected, d.rows_found, d.problem) for d in wh.damaged()] == [
        ("a", "toy", 0, 10, None, "missing"), ("a", "toy", 1, 10, 4, "4 rows, 10 committed")]
    assert sorted(wh.commit_records()) == [("a", "toy", 0), ("a", "toy", 1), ("a", "toy", 2), ("b", "toy", 0)]
    assert sorted(wh.commits()) == [("a", "toy", 2), ("b", "toy", 0)]  # resume redoes shards 0 and 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    for part in ["run 'a'", "2 committed file(s) damaged", deleted.relative_to(tmp_path).as_posix(),
                 "python -m pipeline check --run a", "rerun the stage to redo the shard"]:
        assert part in warnings[0], (part, warnings[0])
    # readers open no file to validate it: another run stays queryable, the damaged run's error names the file
    assert wh.connect(runs=["b"]).execute("select count(*) from toy").fetchone()[0] == 10
    with pytest.raises(Exception, match=deleted.name):
        count(wh, "a")
    commit_toy(wh, "a", 0, 10)
    commit_toy(wh, "a", 1, 10)
    assert wh.damaged() == [] and count(wh, "a") == 30


def test_unreadable_file_is_damaged(tmp_path):
    wh = Warehouse(tmp_path)
    commit_toy(wh, "a", 0, 10)
    committed_path(wh, "a", 0).write_bytes(b"")
    [d] = wh.damaged("a")
    assert d.rows_found is None and d.problem.startswith("unreadable")
    assert wh.commits("a") == {}


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["r\n", "r/x", ".r", "", "r" * 101])
def test_bad_run_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not usable in a path"):
        check_run_name(name)


def test_bad_file_prefixes_and_partitions_are_refused(tmp_path):
    wh = Warehouse(tmp_path)
    with pytest.raises(ValueError, match="file_prefix"):
        wh.table_path("segments", "a", 0, file_prefix="ctc\n")
    with pytest.raises(ValueError, match="tier='ipa/narrow' is not usable as a folder name"):
        wh.table_path("metrics", "a", 0, tier="ipa/narrow")
    assert wh.table_path("frames", "a", 0, layer=-1).parent.name == "layer=-1"


def test_warehouse_path_with_a_quote(tmp_path):
    root = tmp_path / "it's a warehouse"
    wh = Warehouse(root)
    commit_toy(wh, "a", 0, 10)
    assert query(root, "select count(*) as n from toy").column("n").to_pylist() == [10]
    relative = "select count(*) as n from read_parquet('toy/run=a/part-00000.*.parquet')"  # file_search_path
    assert query(root, relative).column("n").to_pylist() == [10]


def test_param_with_leading_zeros_stays_a_string(tmp_path):
    wh = Warehouse(tmp_path)
    commit_toy(wh, "007", 0, 10)
    commit_toy(wh, "7", 0, 3)
    params = dict([parse_param("run=007")])
    assert params == {"run": "007"}
    assert query(tmp_path, "select count(*) as n from toy where run = $run", params).column("n").to_pylist() == [10]
    assert parse_param("k=8") == ("k", 8) and parse_param("x=-0.5") == ("x", -0.5)
    assert parse_param("run='7'") == ("run", "7") and parse_param("v=1.0.2") == ("v", "1.0.2")


def test_facts_written_atomically_and_durably(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(warehouse_module.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    wh = Warehouse(tmp_path)
    wh.ensure_facts("a", {"model": "m"})
    assert any("/_tmp/facts.a." in p for p in synced)  # the file before its rename
    assert str(tmp_path / "_runs") in synced  # the folder after it
    assert json.loads(wh.facts_path("a").read_text())["model"] == "m"
