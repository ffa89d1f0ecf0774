"""The commit protocol: write-once files, one commit object per shard and generation, manifests.

The same tests run against S3 in test_s3.py (`warehouse` fixture there)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.warehouse import CommitConflict, Warehouse
from pipeline.warehouse import lock as runlock

TOY = pa.schema([("utterance_id", pa.string()), ("frame", pa.int32())])


def toy(n: int, start: int = 0) -> pa.Table:
    return pa.table({"utterance_id": [f"u{i}" for i in range(start, start + n)],
                     "frame": pa.array(range(start, start + n), pa.int32())}, schema=TOY)


def files_of(wh: Warehouse, table: str = "toy") -> list[str]:
    return [rel for rel in wh.store.listdir(table)]


def race(wh: Warehouse, run: str = "a", shard: int = 0) -> tuple[list, list[Exception]]:
    """Two writers that both start the shard at the same generation, then commit: (winners, errors)."""
    start = wh.generation(run, "toy", shard)
    records = [wh.write("toy", toy(5, 100 * i), run, shard) for i in range(2)]
    won, lost = [], []
    for record in records:
        try:
            won.append(wh.commit(run, "toy", shard, [record], generation=start))
        except CommitConflict as err:
            lost.append(err)
    return won, lost


def check_race(wh: Warehouse) -> None:
    won, lost = race(wh)
    assert len(won) == 1 and len(lost) == 1
    assert "shard 0 of toy was committed by another writer" in str(lost[0]) and "removed" in str(lost[0])
    assert files_of(wh) == [won[0]["files"][0]["path"]]  # the loser's file is gone
    assert [rec["files"] for rec in wh.commit_records("a").values()] == [won[0]["files"]]
    assert wh.connect().execute("select count(*) from toy").fetchone()[0] == 5


def check_threads_race(wh: Warehouse, n: int = 6) -> None:
    """n threads commit one shard at one generation at once: exactly one commit object is created."""
    start = wh.generation("a", "toy", 3)
    records = [wh.write("toy", toy(2, 10 * i), "a", 3) for i in range(n)]
    barrier, outcome = threading.Barrier(n), []

    def one(record):
        barrier.wait()
        try:
            wh.commit("a", "toy", 3, [record], generation=start)
            outcome.append("won")
        except CommitConflict:
            outcome.append("lost")

    threads = [threading.Thread(target=one, args=(r,)) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["lost"] * (n - 1) + ["won"]
    assert len([f for f in files_of(wh) if "/part-00003." in f]) == 1


def check_generations_and_manifest(wh: Warehouse) -> None:
    for shard in range(3):
        wh.commit("a", "toy", shard, [wh.write("toy", toy(3, 10 * shard), "a", shard)])
    redo = wh.write("toy", toy(4, 0), "a", 0)
    wh.commit("a", "toy", 0, [redo])  # a rerun of shard 0: generation 2 supersedes 1
    assert wh.generation("a", "toy", 0) == 2
    assert wh.commit_records("a")[("a", "toy", 0)]["files"][0]["path"] == redo.path
    assert sorted(files_of(wh)) == sorted(rec["files"][0]["path"] for rec in wh.commit_records("a").values())
    assert wh.compact("a")
    manifest = json.loads(wh.store.read_bytes("_manifests/run=a.json"))
    assert manifest["covered"] == {"toy/0": 2, "toy/1": 1, "toy/2": 1} and len(manifest["records"]) == 3
    # after compaction, only newer commit objects are read
    reads = []
    real = wh.store.read_bytes
    wh.store.read_bytes = lambda rel: reads.append(rel) or real(rel)
    try:
        assert sorted(wh.commit_records("a")) == [("a", "toy", 0), ("a", "toy", 1), ("a", "toy", 2)]
        assert reads == ["_manifests/run=a.json"]
        wh.commit("a", "toy", 3, [wh.write("toy", toy(1, 90), "a", 3)])
        reads.clear()
        assert len(wh.commit_records("a")) == 4
        assert reads == ["_manifests/run=a.json", "_commits/run=a/toy/00003.000001.json"]
    finally:
        wh.store.read_bytes = real
    assert wh.connect().execute("select count(*) from toy").fetchone()[0] == 4 + 3 + 3 + 1
    # two compactions from one snapshot: the second loses its conditional replace and keeps the first's
    _, tag = wh.store.read_tagged("_manifests/run=a.json")
    assert wh.store.replace("_manifests/run=a.json", b"{}", tag + "x" if tag else "x") is False


def test_commit_race_local(tmp_path: Path) -> None:
    check_race(Warehouse(tmp_path))


def test_commit_race_threads_local(tmp_path: Path) -> None:
    check_threads_race(Warehouse(tmp_path))


def test_generations_and_manifest_local(tmp_path: Path) -> None:
    check_generations_and_manifest(Warehouse(tmp_path))


def test_a_stale_token_never_supersedes_a_newer_one(tmp_path: Path) -> None:
    """A writer whose lease was taken over (token 1) commits after the new holder (token 2): ignored."""
    wh = Warehouse(tmp_path)
    new = wh.write("toy", toy(3), "a", 0)
    old = wh.write("toy", toy(7), "a", 0)
    rec = wh.commit("a", "toy", 0, [new])
    folder = tmp_path / "_commits" / "run=a" / "toy"
    (folder / "00000.000001.json").write_text(json.dumps({**rec, "token": 2}))  # the new holder's commit
    stale = {**rec, "generation": 2, "token": 1, "files": [old.as_dict()]}  # the old holder's, landing late
    (folder / "00000.000002.json").write_text(json.dumps(stale))
    assert wh.commit_records("a")[("a", "toy", 0)]["files"][0]["path"] == new.path
    assert wh.connect().execute("select count(*) from toy").fetchone()[0] == 3


def test_commit_records_the_lease_token(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    with wh.lock("a", "test") as lease:
        rec = wh.commit("a", "toy", 0, [wh.write("toy", toy(1), "a", 0)])
    assert rec["token"] == lease.token >= 1


def test_old_commit_logs_are_still_read(tmp_path: Path) -> None:
    """A warehouse written before commit objects: `.jsonl` logs, fixed file names. Read as they are; a
    new commit of a shard supersedes the old line; compaction folds the logs into the manifest."""
    wh = Warehouse(tmp_path)
    old = [wh.write("toy", toy(2, 10 * s), "a", s) for s in range(2)]
    log = tmp_path / "_commits" / "run=a" / "toy.rank0.jsonl"
    log.parent.mkdir(parents=True)
    lines = [json.dumps({"run": "a", "stage": "toy", "shard": s, "files": [f.as_dict()], "time": 1.0 + s})
             for s, f in enumerate(old)]
    log.write_text("\n".join(lines) + "\n{\"run\": \"a\", \"sta")  # and a torn last line
    assert sorted(wh.commit_records("a")) == [("a", "toy", 0), ("a", "toy", 1)]
    new = wh.write("toy", toy(5), "a", 1)
    wh.commit("a", "toy", 1, [new])
    assert wh.commit_records("a")[("a", "toy", 1)]["files"][0]["path"] == new.path
    wh.compact("a")
    assert wh.connect().execute("select count(*) from toy").fetchone()[0] == 2 + 5
    log.write_text(log.read_text() + "\n" + json.dumps({"run": "a", "stage": "toy", "shard": 2,
                                                         "files": [], "time": 9.0}) + "\n")  # an old job appends
    assert ("a", "toy", 2) in wh.commit_records("a")


def test_lease_on_a_store_is_taken_over_only_when_stale(tmp_path: Path, monkeypatch) -> None:
    check_object_lease(tmp_path, monkeypatch, Warehouse(tmp_path))


def check_object_lease(tmp_path: Path, monkeypatch, wh: Warehouse) -> None:
    """The object-store lease (conditional writes, no flock), exercised on any Store."""
    monkeypatch.setenv("PIPELINE_LOCK_TTL_S", "30")
    store = wh.store
    t1, holder = runlock._remote_try_acquire(store, "a", "job one", "job:1")
    assert t1 == 1 and holder is None
    t2, holder = runlock._remote_try_acquire(store, "a", "job two", "job:2")
    assert t2 is None and holder["command"] == "job one"  # held and fresh: refused
    joined, _ = runlock._remote_try_acquire(store, "a", "job one", "job:1")
    assert joined == 1  # another rank of the same job joins
    lease = json.loads(store.read_bytes("_locks/run=a.json"))
    lease["expires"] = 0  # the holder stopped renewing
    store.put("_locks/run=a.json", json.dumps(lease).encode())
    t3, _ = runlock._remote_try_acquire(store, "a", "job two", "job:2")
    assert t3 == 2
    stale = runlock.Lease(wh.url, "a", "job:1", "job one", 1, store=store)
    with pytest.raises(runlock.LeaseLost, match="lost its lock"):
        stale.check("commit shard 0")
    runlock._remote_release(runlock.Lease(wh.url, "a", "job:2", "job two", 2, store=store))
    assert json.loads(store.read_bytes("_locks/run=a.json"))["released"] is True
    t4, _ = runlock._remote_try_acquire(store, "a", "job three", "job:3")
    assert t4 == 3  # tokens only grow


# ---------------------------------------------------------------- opening only what a query reads
@pytest.mark.parametrize("sql, params, expected", [
    ("select count(*) from frames where run = 'r0' and layer = 3", {}, ({"r0"}, {3})),
    ("select * from frames where run = $run and layer = $layer", {"run": "a", "layer": 2}, ({"a"}, {2})),
    ("select * from frames where run in ('a', 'b') union all select * from frames where run = 'c' and layer = 1",
     {}, ({"a", "b", "c"}, None)),
    ("with x as (select * from segments where run = 'a') select count(*) from x", {}, ({"a"}, None)),
    # not proven: every run
    ("select * from frames where run <> 'r0'", {}, (None, None)),
    ("select * from frames where run = 'a' or layer = 1", {}, (None, None)),
    ("select run, count(*) from frames group by run", {}, (None, None)),
    ("select * from frames f join segments s using (run, utterance_id) where f.run = 'a'", {}, (None, None)),
    ("select * from frame_labels('a', 'phone')", {}, (None, None)),
    ("select * from frames where run = 'a' and utterance_id in (select utterance_id from segments)", {},
     (None, None)),
    ("selec 1", {}, (None, None)),
])
def test_scope_is_proven_or_every_run(sql, params, expected) -> None:
    from pipeline.warehouse.scope import scope

    assert scope(sql, params) == expected


def test_scoped_views_give_the_rows_of_the_whole(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main
    from pipeline.warehouse import vectors
    from pipeline.warehouse.schemas import frames_schema

    wh = Warehouse(tmp_path)
    schema = frames_schema(2, "float16")
    for run in ("a", "b"):
        for layer in (0, 1):
            n = 3 + layer + (run == "b")
            table = pa.table({"utterance_id": ["u"] * n, "frame": pa.array(range(n), pa.int32()),
                              "time_s": pa.array([0.02 * i for i in range(n)], pa.float32()),
                              "phone": ["p"] * n, "word": ["w"] * n,
                              "vector": vectors.encode(__import__("numpy").ones((n, 2)))}, schema=schema)
            wh.commit(run, "extract", layer, [wh.write("frames", table, run, layer, layer=layer)])
    whole = wh.connect()
    part = wh.connect(runs=["b"], layers=[1])
    sql = "select run, layer, count(*), sum(list_sum(vector)) from frames where run = 'b' and layer = 1 group by all"
    assert part.execute(sql).fetchall() == whole.execute(sql).fetchall() == [("b", 1, 5, 10.0)]
    assert part.execute("select count(*) from frames").fetchone()[0] == 5  # only b's layer-1 files
    assert main(["sql", "select count(*) as n from frames where run = 'a' and layer = 0", "--format", "csv",
                 "--warehouse", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "3"]
    assert main(["sql", "select count(*) as n from frames where run <> 'a'", "--format", "csv",
                 "--warehouse", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "9"]
