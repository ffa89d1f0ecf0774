"""pipeline.stages.check and sql/checks: a healthy warehouse passes every check; each kind of damage and each
bad analysis table fails its check, names the run and the file, and leaves the other runs checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages import check as C
from pipeline.stages import transcripts as T
from pipeline.stages.analyze import CLUSTERS_SCHEMA, AnalyzeConfig, analyze
from pipeline.stages.reduce import reduce
from pipeline.warehouse.schemas import SEGMENTS, UTTERANCES
from pipeline.warehouse import FileRecord, Warehouse
from pipeline.testing import make_frames_warehouse

GEOMETRY = {"receptive_field_samples": 400, "hop_samples": 320, "sample_rate_hz": 16000}
K = 4
ANALYSIS_TABLES = ("clusters", "centroids", "metrics", "cluster_labels", "group_metrics", "reductions", "decoded",
                   "frame_disagreement")


def add_greedy_tier(wh: Warehouse, run: str, layer: int) -> None:
    """A `ctc_greedy` tier as `labels` writes it: each frame's phone (blank for silence and unlabelled
    frames), one interval per run of equal labels, each frame's centre inside its interval."""
    g = wh.read_facts(run)["geometry"]
    hop_s, offset_s = g["hop_samples"] / g["sample_rate_hz"], (g["receptive_field_samples"] - g["hop_samples"]) / 2 / g[
        "sample_rate_hz"]
    frames: dict[str, list[str]] = {}
    for utt, phone in wh.connect().execute("select utterance_id, phone from frames where run = ? and layer = ? "
                                           "order by utterance_id, frame", [run, layer]).fetchall():
        frames.setdefault(utt, []).append(T.BLANK_LABEL if phone in (None, "sil") else phone)
    rows = []
    for utt, labels in frames.items():
        starts = [0] + [f for f in range(1, len(labels)) if labels[f] != labels[f - 1]]
        for idx, (a, b) in enumerate(zip(starts, starts[1:] + [len(labels)])):
            rows.append({"utterance_id": utt, "tier": T.GREEDY_TIER, "idx": idx, "label": labels[a],
                         "start_s": offset_s + hop_s * a, "end_s": offset_s + hop_s * b, "source": "test"})
    record = wh.write("segments", pa.Table.from_pylist(rows, schema=SEGMENTS), run, 0, file_prefix="ctc_greedy")
    wh.commit(run, f"test.{T.GREEDY_TIER}", 0, [record])  # not `labels.…`: that stage must label every shard


def analyse_fully(root: Path, run: str, layer: int) -> None:
    """Every analysis table of a run: clusters, centroids, metrics, cluster_labels, group_metrics
    (by gender), on tier phone and (for `layer`, same k) ctc_greedy, a PCA map, decoded transcripts
    and frame disagreement."""
    add_greedy_tier(Warehouse(root), run, layer)
    analyze(AnalyzeConfig(run=run, warehouse=str(root), k=K, sample_per_label=40, n_iter=10, by="gender",
                          no_silence=True))
    analyze(AnalyzeConfig(run=run, warehouse=str(root), k=K, sample_per_label=40, n_iter=10, tier=T.GREEDY_TIER,
                          layers=str(layer), probe=False))  # a second clustering of the layer with the same k
    reduce(run, layer, "pca", warehouse=str(root), n=200)
    T.transcripts(T.TranscriptsConfig(run=run, warehouse=str(root)))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Two synthetic runs: 'a' with every analysis table, 'b' with frames only."""
    root = tmp_path_factory.mktemp("check") / "wh"
    for run, seed in (("a", 0), ("b", 1)):
        make_frames_warehouse(root, run=run, seed=seed, layers=(-1, 0), n_utts=6)
        Warehouse(root).ensure_facts(run, {"geometry": GEOMETRY})
    analyse_fully(root, "a", 0)
    return root


@pytest.fixture
def wh(built, tmp_path) -> Warehouse:
    """A copy of `built` to damage."""
    shutil.copytree(built, tmp_path / "wh", ignore=shutil.ignore_patterns("_models", "_tmp"))
    return Warehouse(tmp_path / "wh")


def failed(report: C.CheckReport) -> set[tuple[str, str]]:
    return {(r.check, r.run) for r in report.failures}


def files_of(wh: Warehouse, table: str, run: str = "a") -> list[str]:
    return wh.committed_files(table, run)


def rewrite(wh: Warehouse, path: str, change) -> None:
    """Replace a committed file's rows by `change(rows)` (a list of dicts, same length: the commit still
    holds), keeping its schema."""
    table = pq.read_table(wh.root / path)
    rows = table.to_pylist()
    change(rows)
    assert len(rows) == table.num_rows
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), wh.root / path)


def append(wh: Warehouse, table: str, rows: list[dict], schema: pa.Schema, run: str = "a", **partitions) -> str:
    """Commit one more file of `table` (under a test stage of its own)."""
    record = wh.write(table, pa.Table.from_pylist(rows, schema=schema), run, 99, file_prefix="extra", **partitions)
    wh.commit(run, f"test.{table}", 99, [record])
    return record.path


# ---------------------------------------------------------------- a healthy warehouse


def test_every_analysis_table_is_checked_and_passes(built):
    con = Warehouse(built).connect()
    for table in ANALYSIS_TABLES:  # the checks below are not vacuous: every table has rows
        assert con.execute(f"select count(*) from {table} where run = 'a'").fetchone()[0] > 0, table
    assert con.execute("select count(distinct tier) from metrics where layer = 0 and k = 4").fetchone()[0] == 2
    report = C.check(built)
    assert report.ok, report.table()
    names = {r.check for r in report.results}
    assert {p.stem for p in C.CHECKS_DIR.glob("*.sql")} <= names
    assert {"committed_files_exist", "committed_files_readable", "committed_files_row_count", "facts_readable",
            "facts_layers_match_frames", "facts_dims_match_frames"} <= names
    assert C.check(built, run="a").ok and C.check(built, run="b").ok


def test_empty_views_pass(tmp_path):
    """A warehouse without any analysis table (or without anything) passes: an empty view has no bad row."""
    assert C.check(Warehouse(tmp_path / "empty")).ok
    make_frames_warehouse(tmp_path / "frames_only", run="x", layers=(-1, 0), n_utts=3)
    report = C.check(tmp_path / "frames_only")
    assert report.ok, report.table()


def test_missing_warehouse_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no warehouse at .*nowhere"):
        C.check(tmp_path / "nowhere")


@pytest.mark.slow
def test_the_embedded_run_passes_every_check(tmp_path):
    """The real chain on the embedded corpus and model: extract, labels tier, analyze, reduce, transcripts."""
    from pipeline.stages.extract import ExtractConfig, extract

    root = tmp_path / "wh"
    extract(ExtractConfig(run="emb", warehouse=str(root), limit=8, layers="-1,1", shard_size=4, progress=False))
    analyse_fully(root, "emb", 1)
    con = Warehouse(root).connect()
    assert all(con.execute(f"select count(*) from {t}").fetchone()[0] > 0 for t in ANALYSIS_TABLES)
    report = C.check(root)
    assert report.ok, report.table()
    assert C.check_written(root, "emb").ok


# ---------------------------------------------------------------- damaged files and facts


def test_a_deleted_committed_file_fails_naming_run_and_file_and_other_runs_are_still_checked(wh):
    path = [p for p in files_of(wh, "frames") if "layer=0" in p][0]
    (wh.root / path).unlink()
    report = C.check(wh)
    bad = {r.check: r for r in report.failures if r.run == "a"}
    assert bad["committed_files_exist"].count == 1 and path in bad["committed_files_exist"].example
    assert "rerun" in bad["committed_files_exist"].example
    # the shard is left out of every query, so its clusters no longer cover the layer: said too
    assert "clusters_cover_frames" in bad
    assert not [r for r in report.failures if r.run != "a"], report.table()
    assert C.check(wh, run="b").ok
    assert path in report.table() and "FAIL" in report.table()


def test_a_truncated_file_and_a_short_file_fail(wh):
    frames = files_of(wh, "frames")
    blob = (wh.root / frames[0]).read_bytes()
    (wh.root / frames[0]).write_bytes(blob[: len(blob) // 2])
    table = pq.read_table(wh.root / frames[1])
    pq.write_table(table.slice(0, table.num_rows - 1), wh.root / frames[1])
    bad = {r.check: r for r in C.check(wh).failures}
    assert bad["committed_files_readable"].run == "a" and frames[0] in bad["committed_files_readable"].example
    assert bad["committed_files_row_count"].run == "a" and frames[1] in bad["committed_files_row_count"].example
    assert f"{table.num_rows - 1} rows, {table.num_rows} committed" in bad["committed_files_row_count"].example


def test_facts_recording_other_layers_than_the_frames_fail(wh):
    """Two writers of one run: the facts say layers [0] while every shard holds frames of -1 and 0."""
    path = wh.facts_path("b")
    facts = json.loads(path.read_text())
    path.write_text(json.dumps({**facts, "layers": [0]}))
    report = C.check(wh)
    assert failed(report) == {("facts_layers_match_frames", "b")}, report.table()
    bad = report.failures[0]
    assert bad.count == 2  # both extract shards
    assert "facts record layers [0]" in bad.example and "layers [-1, 0]" in bad.example
    with pytest.raises(C.CheckFailed, match=r"(?s)run 'b'.*facts_layers_match_frames +b +FAIL"):
        C.check_written(wh, "b")


def test_an_extract_shard_missing_a_layer_fails(wh):
    records = wh.commit_records("b", "extract")
    rec = records[("b", "extract", 1)]
    kept = [FileRecord(f["path"], f["rows"], f["bytes"]) for f in rec["files"] if "layer=-1" not in f["path"]]
    wh.commit("b", "extract", 1, kept)
    bad = {r.check: r for r in C.check(wh).failures}
    assert "extract shard 1 committed frames of layers [0]" in bad["facts_layers_match_frames"].example


def test_vectors_of_another_width_than_the_model_fail(wh):
    path = wh.facts_path("b")
    facts = json.loads(path.read_text())
    path.write_text(json.dumps({**facts, "model": {**facts["model"], "hidden_size": 32, "conv_dim": 16}}))
    report = C.check(wh)
    assert failed(report) == {("facts_dims_match_frames", "b")}, report.table()
    assert report.failures[0].count == 2  # the two files of layer 0; layer -1 is conv_dim = 16 wide
    assert "vectors float16[16], the facts say float16[32] for layer 0" in report.failures[0].example


def test_an_empty_facts_file_fails_and_every_other_run_is_still_checked(wh):
    wh.facts_path("a").write_text("")
    report = C.check(wh)
    bad = {r.check: r for r in report.failures}
    assert bad["facts_readable"].run == "a" and "_runs/a.json: empty file" in bad["facts_readable"].example
    assert not [r for r in report.failures if r.run == "b"], report.table()
    assert C.check(wh, run="b").ok
    with pytest.raises(C.CheckFailed, match="empty file"):
        C.check_written(wh, "a")


def test_check_written_looks_at_its_own_stages_only(wh):
    path = files_of(wh, "reductions")[0]
    (wh.root / path).unlink()
    assert C.check_written(wh, "a", stages=["extract"]).ok
    with pytest.raises(C.CheckFailed, match=r"(?s)run 'a'.*committed_files_exist.*" + path.replace(".", r"\.")) as err:
        C.check_written(wh, "a", stages=["reduce.pca"])
    assert "rerun" in str(err.value)
    assert C.check_written(wh, "b").ok


def test_one_run_is_checked_alone(wh):
    """With run=R every SQL check sees run R only: a duplicate utterance of 'a' fails 'a' alone."""
    row = pq.read_table(wh.root / files_of(wh, "utterances")[0]).slice(0, 1).to_pylist()
    append(wh, "utterances", row, UTTERANCES)
    assert ("utterances_unique", "a") in failed(C.check(wh))
    assert ("utterances_unique", "a") in failed(C.check(wh, run="a"))
    assert C.check(wh, run="b").ok


def test_a_broken_query_is_a_failure_and_the_others_still_run(wh, tmp_path, monkeypatch):
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "broken.sql").write_text("select * from no_such_table")
    (checks / "fine.sql").write_text("select * from frames where frame < 0")
    monkeypatch.setattr(C, "CHECKS_DIR", checks)
    report = C.check(wh)
    assert failed(report) == {("broken", "*")}
    assert "query failed" in report.failures[0].example and "no_such_table" in report.failures[0].example


# ---------------------------------------------------------------- bad analysis tables


def set_first(column: str, value):
    def change(rows):
        rows[0][column] = value
    return change


CASES = {
    # name: (table, change of the first committed file of the table, the checks that must fail)
    "cluster id = k": ("clusters", set_first("cluster", K), {"clusters_unique_and_in_range"}),
    "cluster id < 0": ("clusters", set_first("cluster", -1), {"clusters_unique_and_in_range"}),
    "a cluster row without its frame": ("clusters", set_first("frame", 9999), {"clusters_cover_frames"}),
    "centroid ids not 0..k-1": ("centroids", set_first("cluster", 3), {"centroids_one_per_cluster"}),
    "centroid sizes not the clustered frames": ("centroids", set_first("size", 10 ** 6), {"centroids_one_per_cluster"}),
    "AMI above 1": ("metrics", lambda rows: _set_metric(rows, "ami", 1.5), {"metrics_in_range"}),
    "negative MI": ("metrics", lambda rows: _set_metric(rows, "mi", -0.5), {"metrics_in_range"}),
    "purity NaN": ("metrics", lambda rows: _set_metric(rows, "cluster_purity", float("nan")), {"metrics_in_range"}),
    "more clusters than k": ("metrics", lambda rows: _set_metric(rows, "n_clusters", K + 1), {"metrics_in_range"}),
    "an unknown metric": ("metrics", set_first("metric", "bogus"), {"metrics_in_range"}),
    "a metric twice": ("metrics", lambda rows: _rename_metric(rows, "nmi", "ami"), {"metrics_unique"}),
    "group score out of range": ("group_metrics", set_first("value", 2.0), {"metrics_in_range"}),
    "group metric twice": ("group_metrics", lambda rows: rows.__setitem__(1, dict(rows[0])), {"metrics_unique"}),
    "share is not count / size": ("cluster_labels", set_first("share", 0.01), {"cluster_labels_unique_and_consistent"}),
    "label count above cluster size": ("cluster_labels", lambda rows: rows[0].update(count=rows[0]["cluster_size"] + 1,
                                                                                    share=1.0),
                                       {"cluster_labels_unique_and_consistent"}),
    "mapped cluster = k": ("cluster_labels", set_first("cluster", K), {"cluster_labels_unique_and_consistent"}),
    "a mapped cluster twice": ("cluster_labels", lambda rows: rows.__setitem__(1, dict(rows[0])),
                               {"cluster_labels_unique_and_consistent"}),
    "a map point that is no frame": ("reductions", set_first("frame", 9999), {"reductions_unique_and_of_frames"}),
    "a map point twice": ("reductions", lambda rows: rows.__setitem__(1, dict(rows[0])),
                          {"reductions_unique_and_of_frames"}),
    "a map point at NaN": ("reductions", set_first("x", float("nan")), {"reductions_unique_and_of_frames"}),
    "decoded for an unknown utterance": ("decoded", set_first("utterance_id", "nobody/000"),
                                         {"decoded_unique_and_of_utterances"}),
    "decoded twice": ("decoded", lambda rows: rows.__setitem__(1, dict(rows[0])), {"decoded_unique_and_of_utterances"}),
    "cer not edits / chars": ("decoded", lambda rows: rows[0].update(cer=rows[0]["cer"] + 0.5),
                              {"decoded_unique_and_of_utterances"}),
    "disagreement of an unknown utterance": ("frame_disagreement", set_first("utterance_id", "nobody/000"),
                                             {"frame_disagreement_unique_and_of_utterances"}),
    "disagreement twice": ("frame_disagreement", lambda rows: rows.__setitem__(1, dict(rows[0])),
                           {"frame_disagreement_unique_and_of_utterances"}),
    "more disagreeing than references": ("frame_disagreement",
                                         lambda rows: rows[0].update(n_disagree=rows[0]["n_references"] + 1),
                                         {"frame_disagreement_unique_and_of_utterances"}),
}


def _set_metric(rows: list[dict], metric: str, value: float) -> None:
    next(r for r in rows if r["metric"] == metric)["value"] = value


def _rename_metric(rows: list[dict], old: str, new: str) -> None:
    next(r for r in rows if r["metric"] == old)["metric"] = new


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_analysis_table_fails_its_check(wh, case):
    table, change, expected = CASES[case]
    path = next(p for p in files_of(wh, table) if "/k=0/" not in p)  # k=0: the CCA rows, not a clustering's
    rewrite(wh, path, change)
    report = C.check(wh)
    assert failed(report) == {(name, "a") for name in expected}, report.table()
    assert all(r.count >= 1 and r.example for r in report.failures)
    assert C.check(wh, run="b").ok


def test_a_partial_clustering_fails(wh):
    """A clustering that assigns only some frames of its layer (a stale one, after a resumed extract)."""
    frames = pq.read_table(wh.root / files_of(wh, "frames")[0], columns=["utterance_id", "frame"]).slice(0, 3)
    rows = [{**r, "cluster": i, "distance": 0.0} for i, r in enumerate(frames.to_pylist())]
    append(wh, "clusters", rows, CLUSTERS_SCHEMA, layer=-1, k=7)
    report = C.check(wh)
    assert failed(report) == {("clusters_cover_frames", "a")}, report.table()
    assert "not every frame of the layer is clustered" in report.failures[0].example


def test_an_unknown_run_is_a_clear_error(built):
    with pytest.raises(ValueError, match=r"no run 'c' in .*\(runs: a, b\)"):
        C.check(built, run="c")
