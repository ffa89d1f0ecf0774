"""The views as a SQL script for any DuckDB client, `sql` output formats and files, the notebook entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.cli import main
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.notebook import open_warehouse, vectors
from pipeline.warehouse import schemas, views
from pipeline.warehouse.views import refresh, views_sql
from pipeline.warehouse import Warehouse
from pipeline.warehouse import vectors as vector_encoding


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """The embedded run with frames of two layers and one clustering: every kind of table."""
    wh = tmp_path_factory.mktemp("wh")
    extract(ExtractConfig(run="emb", warehouse=str(wh), limit=8, layers="-1,2", shard_size=4, progress=False))
    analyze(AnalyzeConfig(run="emb", warehouse=str(wh), layers="-1", k=8, n_iter=5, sample_per_label=50, probe=False))
    return wh


@pytest.fixture
def copy(embedded, tmp_path) -> Path:
    """A copy of the embedded warehouse that a test may damage."""
    return Path(shutil.copytree(embedded, tmp_path / "wh"))


def _script_con(wh: Path, run: str | None = None) -> duckdb.DuckDBPyConnection:
    """What a DuckDB client gets: a fresh connection that ran the script and nothing else."""
    con = duckdb.connect()
    con.execute(views_sql(Warehouse(wh), run))
    return con


def _public_views(con) -> list[str]:
    return sorted(n for (n,) in con.execute("select view_name from duckdb_views() where not internal").fetchall()
                  if not n.startswith("_"))


def _same_views(a, b) -> list[str]:
    names = _public_views(a)
    assert names == _public_views(b)
    for name in names:
        assert a.sql(f"describe {name}").fetchall() == b.sql(f"describe {name}").fetchall(), name
        rows_a = a.sql(f"select * from {name} order by all").to_arrow_table()
        rows_b = b.sql(f"select * from {name} order by all").to_arrow_table()
        assert rows_a.equals(rows_b), name
    return names


def test_script_gives_the_views_of_connect(embedded):
    names = _same_views(Warehouse(embedded).connect(), _script_con(embedded))
    assert {"frames", "clusters", "centroids", "metrics", "cluster_labels", "segments", "utterances", "quarantine",
            "utterance_attributes", "runs", "run_geometry"} <= set(names)
    a, b = Warehouse(embedded).connect(), _script_con(embedded)
    macro = "select * from frame_labels('emb', 'phone') order by all"
    assert a.sql(macro).to_arrow_table().equals(b.sql(macro).to_arrow_table())
    assert b.execute("select count(*) from frames where layer = 2").fetchall()[0][0] > 0
    assert b.sql("select rate from run_geometry").fetchall() == [(16000.0,)]


def test_empty_warehouse_has_the_empty_views(tmp_path):
    names = _same_views(Warehouse(tmp_path).connect(), _script_con(tmp_path))
    assert {"frames", "utterances", "segments", "quarantine", "utterance_attributes", "runs"} <= set(names)
    assert _script_con(tmp_path).execute("select count(*) from frame_labels('x', 'phone')").fetchall()[0] == (0,)


def test_one_run_only(copy):
    wh = Warehouse(copy)
    other = wh.write("utterances", pq.read_table(copy / wh.committed_files("utterances")[0]), "other", 0)
    wh.commit("other", "ingest", 0, [other])
    assert _script_con(copy).sql("select distinct run from utterances order by 1").fetchall() == [("emb",), ("other",)]
    con = _script_con(copy, "emb")
    assert con.sql("select distinct run from utterances").fetchall() == [("emb",)]
    assert con.sql("select run from runs").fetchall() == [("emb",)]
    with pytest.raises(ValueError, match="no run 'nope'.*emb"):
        views_sql(wh, "nope")


def test_quote_and_comma_in_the_warehouse_path(tmp_path):
    root = tmp_path / "it's, a warehouse"
    wh = Warehouse(root)
    wh.commit("a", "toy", 0, [wh.write("toy", pa.table({"x": [1, 2, 3]}), "a", 0)])
    assert _script_con(root).execute("select count(*), sum(x) from toy where run = 'a'").fetchall() == [(3, 6)]


def test_damaged_facts_leave_only_that_run_out(copy, caplog):
    (copy / "_runs" / "broken.json").write_text("{not json")
    con = _script_con(copy)
    assert con.execute("select run from runs").fetchall() == [("emb",)]
    assert con.execute("select count(*) from frames").fetchall()[0][0] > 0
    assert "broken" in caplog.text and "left out of `runs`" in caplog.text


def test_uncommitted_file_is_not_in_the_views(copy):
    """A file renamed into place by a job that died before its commit: a glob reads it, the views do not."""
    committed = Warehouse(copy).committed_files("frames")
    first = copy / committed[0]
    shutil.copy(first, first.with_name("part-00099.parquet"))
    con = _script_con(copy)
    n_frames = con.execute("select count(*) from frames").fetchall()[0][0]
    globbed = con.execute(f"select count(*) from read_parquet('{copy}/frames/**/*.parquet')").fetchall()[0][0]
    assert globbed == n_frames + pq.read_metadata(first).num_rows
    assert "part-00099" not in views_sql(Warehouse(copy))


def test_deleted_file_is_named_by_duckdb(copy):
    script = views_sql(Warehouse(copy))
    victim = copy / Warehouse(copy).committed_files("frames")[-1]
    victim.unlink()
    con = duckdb.connect()
    with pytest.raises(duckdb.Error) as err:
        con.execute(script)
        con.sql("select count(*) from frames").fetchall()
    assert victim.name in str(err.value)


def test_refresh_writes_the_script_at_the_root(copy):
    path = refresh(Warehouse(copy))
    assert path == copy / "views.sql"
    assert path.read_text() == views_sql(Warehouse(copy))
    assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_refreshes_keep_every_commit(copy, monkeypatch):
    """Refresh A reads the commits; run `late` commits and refreshes while A has not written yet. The file
    left at the end must name `late`'s file: B waits for A, then reads the commits A did not see."""
    wh = Warehouse(copy)
    build = views.views_sql
    b_done = threading.Event()

    def commit_and_refresh_late():
        late = wh.write("utterances", pq.read_table(copy / wh.committed_files("utterances")[0]), "late", 0)
        wh.commit("late", "ingest", 0, [late])
        refresh(wh)
        b_done.set()

    def slow_build(wh_, run=None, **scope):
        script = build(wh_, run, **scope)
        if threading.current_thread() is threading.main_thread():
            b.start()
            b_done.wait(1.0)  # without the mutex, B writes its file now and A overwrites it below
        return script

    b = threading.Thread(target=commit_and_refresh_late)
    monkeypatch.setattr(views, "views_sql", slow_build)
    refresh(wh)
    b.join(30)
    [late] = wh.committed_files("utterances", "late")
    assert late.startswith("utterances/run=late/part-00000.") and late in (copy / "views.sql").read_text()


def _duckdb_cli() -> str | None:
    return os.environ.get("DUCKDB_CLI") or shutil.which("duckdb")


@pytest.mark.skipif(_duckdb_cli() is None, reason="no duckdb command line (pip install duckdb-cli, or DUCKDB_CLI=…)")
def test_duckdb_command_line_reads_the_script(embedded, tmp_path):
    script = refresh(Warehouse(embedded))
    by_layer = "select layer, count(*) n from frames group by layer order by layer"
    expected = _script_con(embedded).sql(by_layer).fetchall()
    done = subprocess.run([_duckdb_cli(), "-init", str(script), "-json", "-c", by_layer],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [(r["layer"], r["n"]) for r in json.loads(done.stdout)] == expected
    done = subprocess.run([_duckdb_cli(), "-csv", "-c", f".read {script}", "-c",
                           "select count(*) from frame_labels('emb', 'phone')"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == sum(n for _, n in expected)  # every layer's frames


# ---------------------------------------------------------------- the command line


def test_views_command_prints_and_writes(embedded, tmp_path, capsys):
    assert main(["views", "--warehouse", str(embedded)]) == 0
    assert capsys.readouterr().out == views_sql(Warehouse(embedded))
    out = tmp_path / "missing" / "folder" / "views.sql"
    assert main(["views", "--warehouse", str(embedded), "--run", "emb", "--out", str(out)]) == 0
    assert out.read_text() == views_sql(Warehouse(embedded), "emb")


def test_views_command_refuses_a_missing_warehouse(tmp_path, capsys):
    assert main(["views", "--warehouse", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no warehouse at") and "\n" not in err
    assert not (tmp_path / "nope").exists()


QUERY = "select utterance_id, frame, time_s, phone, layer from frames where run = $run order by all limit 50"


def test_sql_json_is_one_array_and_ndjson_one_object_per_line(embedded, capsys):
    expected = Warehouse(embedded).connect().sql(QUERY.replace("$run", "'emb'")).to_arrow_table().to_pylist()
    assert main(["sql", QUERY, "--param", "run=emb", "--format", "json", "--warehouse", str(embedded)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) == 50
    assert [{k: r[k] for k in ("utterance_id", "frame", "phone", "layer")} for r in rows] == [
        {k: r[k] for k in ("utterance_id", "frame", "phone", "layer")} for r in expected]
    assert [r["time_s"] for r in rows] == pytest.approx([r["time_s"] for r in expected])
    assert main(["sql", QUERY, "--param", "run=emb", "--format", "ndjson", "--warehouse", str(embedded)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_sql_json_has_no_nan_and_keeps_maps(embedded, capsys):
    """JSON has no NaN: a non-finite float is null (strict parsers such as jq or JSON.parse refuse NaN)."""
    sql = "select 'nan'::double as x, 1.5 as y, metadata from utterances order by utterance_id limit 1"
    assert main(["sql", sql, "--format", "json", "--warehouse", str(embedded)]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text
    (row,) = json.loads(text)
    assert row["x"] is None and row["y"] == 1.5 and isinstance(row["metadata"], dict)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".ndjson"])
def test_sql_out_writes_the_file_its_suffix_names(embedded, tmp_path, capsys, suffix):
    expected = Warehouse(embedded).connect().sql(QUERY.replace("$run", "'emb'")).to_arrow_table()
    out = tmp_path / "not" / "yet" / f"result{suffix}"
    assert main(["sql", QUERY, "--param", "run=emb", "--out", str(out), "--warehouse", str(embedded)]) == 0
    assert f"50 rows written to {out}" in capsys.readouterr().out
    if suffix == ".parquet":
        got = pq.read_table(out)
    elif suffix == ".csv":
        got = pacsv.read_csv(out)
    else:
        text = out.read_text()
        rows = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()]
        got = pa.Table.from_pylist(rows)
    for name in ("utterance_id", "frame", "phone", "layer"):
        assert got[name].to_pylist() == expected[name].to_pylist(), name
    assert got["time_s"].to_pylist() == pytest.approx(expected["time_s"].to_pylist())
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize("argv, message", [
    (["select 1", "--out", "{tmp}/x.txt"], "unknown suffix '.txt'"),
    (["select 1", "--out", "{tmp}/x.csv", "--format", "json"], "--format json does not match"),
    (["selec 1", "--out", "{tmp}/sub/y.json"], "syntax error"),
])
def test_sql_mistakes_are_one_line_and_write_nothing(embedded, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["sql", *[a.format(tmp=out) for a in argv], "--warehouse", str(embedded)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message.lower() in err.lower()
    assert list(out.iterdir()) == []


def test_score_json_is_an_array_too(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": [0, 0, 1, 1], "cluster": [1, 1, 0, 0]}), path)
    assert main(["score", str(path), "--labels", "label", "--clusters", "cluster", "--format", "json",
                 "--warehouse", str(tmp_path / "wh")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"]: r["value"] for r in rows}["ami"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the notebook entry point


def test_vectors_are_the_stored_vectors_beside_their_keys(embedded):
    con = open_warehouse(embedded)
    keys, X = vectors(con, "select utterance_id, frame, phone, vector from frames where run = $run and layer = $layer "
                           "order by utterance_id, frame", {"run": "emb", "layer": 2})
    files = sorted((embedded / "frames" / "run=emb" / "layer=2").glob("*.parquet"))
    stored = pa.concat_tables(pq.read_table(f) for f in files).sort_by([("utterance_id", "ascending"),
                                                                       ("frame", "ascending")])
    assert keys.column_names == ["utterance_id", "frame", "phone"]
    assert keys["utterance_id"].to_pylist() == stored["utterance_id"].to_pylist()
    assert keys["frame"].to_pylist() == stored["frame"].to_pylist()
    expected = vector_encoding.matrix(stored)
    assert X.dtype == np.float32 and X.shape == expected.shape and X.shape[1] > 1
    np.testing.assert_array_equal(X, expected)
    keys2, X2 = vectors(embedded, "select utterance_id, vector from frames where layer = 2 and false")
    assert keys2.num_rows == 0 and len(X2) == 0


def test_vectors_refuse_what_is_not_a_matrix():
    con = duckdb.connect()
    with pytest.raises(ValueError, match="different lengths"):
        vectors(con, "select 1 as id, [1.0, 2.0]::float[] as vector union all select 2, [1.0]::float[]")
    with pytest.raises(ValueError, match="1 of 2 rows have no 'vector'"):
        vectors(con, "select 1 as id, [1.0]::float[] as vector union all select 2, null")
    with pytest.raises(ValueError, match="no column 'vector'.*id"):
        vectors(con, "select 1 as id")
    with pytest.raises(ValueError, match=r"parameter\(s\) \['layer'\]"):
        vectors(con, "select $layer as vector")


def test_long_literal_sql(embedded, capsys):
    """Literal SQL longer than a file name (~255 bytes) is SQL, not a file name that is too long."""
    sql = ("select utterance_id, frame, vector from frames where run = $run and layer = 2"
           + " " * 300 + "order by utterance_id, frame limit 3")
    keys, X = vectors(open_warehouse(embedded), sql, {"run": "emb"})
    assert keys.num_rows == 3 and X.shape[0] == 3
    assert main(["sql", sql, "--param", "run=emb", "--format", "ndjson", "--warehouse", str(embedded)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_open_warehouse_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no warehouse at"):
        open_warehouse(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_notebook_api_is_light():
    code = ("import sys; from pipeline import open_warehouse, vectors; "
            "assert callable(open_warehouse) and callable(vectors); "
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """Frames of 2 layers in 6 shards of one utterance (6 files a layer), in a run named like a number."""
    wh = tmp_path_factory.mktemp("wh")
    extract(ExtractConfig(run="2024", warehouse=str(wh), limit=6, layers="-1,2", shard_size=1, progress=False))
    return wh


def test_partition_branches_give_what_hive_partitioning_gives(many_shards, monkeypatch):
    """A partition holding FILES_PER_BRANCH files or more is read by its own read_parquet with the partition
    values as constants; the views are the same as with Hive partitioning over every file (forced here)."""
    script = views_sql(Warehouse(many_shards))
    assert "hive_partitioning = false" in script and "2::BIGINT as \"layer\"" in script
    monkeypatch.setattr(views, "FILES_PER_BRANCH", 10**9)
    hive = views_sql(Warehouse(many_shards))
    assert "hive_partitioning = false" not in hive
    a, b = duckdb.connect(), duckdb.connect()
    a.execute(script)
    b.execute(hive)
    names = _same_views(a, b)
    assert "frames" in names
    assert a.sql("select distinct run, layer from frames order by all").fetchall() == [("2024", -1), ("2024", 2)]
    assert {r[0]: r[1] for r in a.sql("describe frames").fetchall()}["run"] == "VARCHAR"
    assert a.sql("select count(*) from frames where layer = 2").fetchall() == \
        b.sql("select count(*) from frames where layer = 2").fetchall() != [(0,)]


def test_a_layer_query_names_that_layer_only(many_shards):
    """`pipeline sql` on one run and layer builds a view over that layer's files alone."""
    script = views_sql(Warehouse(many_shards), runs=["2024"], layers=[2])
    assert "layer=2/" in script and "layer=-1/" not in script


@pytest.mark.parametrize("table", sorted(schemas.TABLES))
def test_empty_views_are_typed_as_duckdb_reads_the_schema(table):
    """views.duckdb_type (a table, so that opening the warehouse does not ask DuckDB) agrees with DuckDB."""
    schema = schemas.empty_view_schema(table)
    rel = duckdb.connect().from_arrow(schema.empty_table())
    assert [views.duckdb_type(f.type) for f in schema] == [str(t) for t in rel.types]
