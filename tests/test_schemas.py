"""pipeline.warehouse.schemas declares every table the stages write (TABLES, PARTITIONS) and the views of
an empty warehouse show exactly those columns; pipeline.warehouse.keys names every commit stage as the
warehouses on disk do and reads each name back."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.stages.compare import compare
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.stages.metadata import attach_metadata
from pipeline.stages.reduce import reduce
from pipeline.stages.transcripts import TranscriptsConfig, transcripts
from pipeline.warehouse import Warehouse, keys, vectors
from pipeline.warehouse.schemas import PARTITIONS, SEGMENTS, TABLES, centroids_schema, empty_view_schema, frames_schema

HOP_S = 0.02  # the embedded model's geometry: 320-sample hop, 400-sample receptive field at 16 kHz
WRITE_CALL = re.compile(r"""\.(?:write|open_writer)\(\s*["']([a-z_]+)["']""")


def _columns(con, table: str) -> list[tuple[str, str]]:
    return [(name, typ) for name, typ, *_ in con.execute(f"describe {table}").fetchall()]


def _greedy_tier(wh: Warehouse, run: str) -> None:
    """A ctc_greedy segments tier (what `labels` writes) made of the frames' phones, unlabelled frames blank."""
    rows = []
    con = wh.connect()
    frames = con.execute("select utterance_id, list(coalesce(phone, '<blank>') order by frame) from frames "
                         "where run = ? and layer = -1 group by all order by 1", [run]).fetchall()
    for utt, labels in frames:
        starts = [0] + [f for f in range(1, len(labels)) if labels[f] != labels[f - 1]]
        for idx, (a, b) in enumerate(zip(starts, starts[1:] + [len(labels)])):
            rows.append({"utterance_id": utt, "tier": "ctc_greedy", "idx": idx, "label": labels[a],
                         "start_s": 0.0025 + HOP_S * a, "end_s": 0.0025 + HOP_S * b, "source": "test"})
    record = wh.write("segments", pa.Table.from_pylist(rows, schema=SEGMENTS), run, 0, file_prefix="ctc")
    wh.commit(run, "test.ctc_greedy", 0, [record])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[str]]:
    """Every stage run once on a tiny embedded corpus (two runs for compare); returns the root and the
    warnings logged by `transcripts` before any clustering existed."""
    root = tmp_path_factory.mktemp("schemas") / "wh"
    for run in ("a", "b"):
        extract(ExtractConfig(run=run, warehouse=str(root), limit=12, layers="-1,1", shard_size=6, progress=False))
    wh = Warehouse(root)
    ids = [u for (u,) in wh.connect().execute("select utterance_id from utterances where run = 'a'").fetchall()]
    attributes = root.parent / "gender.csv"
    attributes.write_text("utterance_id,gender\n" + "".join(f"{u},{'fm'[i % 2]}\n" for i, u in enumerate(ids)))
    attach_metadata("a", [str(attributes)], warehouse=str(root))
    _greedy_tier(wh, "a")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("pipeline.stages.transcripts").addHandler(handler)
    try:
        transcripts(TranscriptsConfig(run="a", warehouse=str(root)))  # no clustering yet: said, not a crash
    finally:
        logging.getLogger("pipeline.stages.transcripts").removeHandler(handler)
    for run, by in (("a", "gender"), ("b", None)):
        analyze(AnalyzeConfig(run=run, warehouse=str(root), k=3, sample_per_label=20, n_iter=5, probe=False, by=by))
    reduce("a", 1, "pca", warehouse=str(root), n=60)
    compare(("a", "b"), warehouse=str(root), n=60, k=3)
    transcripts(TranscriptsConfig(run="a", warehouse=str(root)))
    return root, [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_every_table_a_module_writes_is_declared():
    package = Path(pipeline.__file__).parent
    named = {table for path in package.rglob("*.py") for table in WRITE_CALL.findall(path.read_text())}
    assert named == set(TABLES)
    assert set(PARTITIONS) <= set(TABLES)


def test_every_committed_file_has_its_declared_schema_and_partitions(written):
    root, _ = written
    wh = Warehouse(root)
    seen = set()
    for rec in wh.commits().values():
        facts = wh.read_facts(rec["run"])
        for f in rec["files"]:
            table, _, *partitions, _ = f["path"].split("/")
            schema = pq.read_schema(root / f["path"]).remove_metadata()
            expected = TABLES[table]
            if table == "frames":
                expected = frames_schema(vectors.type_of(schema.field("vector"))[0], facts["dtype"])
            elif table == "centroids":
                expected = centroids_schema(vectors.type_of(schema.field("vector"))[0])
            assert schema.equals(expected), (f["path"], schema, expected)
            if "vector" in expected.names:  # what the bytes are: float16[D] / float32[D]
                assert schema.field("vector").metadata == expected.field("vector").metadata, f["path"]
            assert [p.split("=")[0] for p in partitions] == [name for name, _ in PARTITIONS.get(table, [])], f["path"]
            seen.add(table)
    assert seen == set(TABLES)  # every table was written, so every schema above was compared


def test_empty_views_have_the_declared_columns_and_those_of_written_files(written, tmp_path):
    root, _ = written
    empty, full = Warehouse(tmp_path / "empty").connect(), Warehouse(root).connect()
    for table in TABLES:
        assert [name for name, _ in _columns(empty, table)] == empty_view_schema(table).names, table
        assert _columns(empty, table) == _columns(full, table), table


def test_stage_keys_are_the_names_on_disk_and_read_back():
    assert keys.analyze_stage(50, "phone") == "analyze.k50.phone"
    assert keys.analyze_stage(50, "ctc_greedy", "gender") == "analyze.k50.ctc_greedy.by.gender"
    assert keys.reduce_stage("tsne") == "reduce.tsne"
    assert keys.compare_stage("ft.v2") == "compare.ft.v2"
    assert keys.labels_stage("ctc_greedy") == "labels.ctc_greedy"
    assert keys.decoded_stage(4, "phone") == "transcripts.decoded.k4"
    assert keys.decoded_stage(4, "ctc_char") == "transcripts.decoded.k4.ctc_char"
    assert keys.disagreement_stage("gap") == "transcripts.disagreement.gap"
    assert keys.metadata_stage("utt2gender", "0123456789ab") == "metadata.utt2gender.0123456789ab"
    for tier in ("phone", "ipa.narrow", "ctc_char"):
        for by in (None, "gender", "region.code"):
            assert keys.parse_analyze(keys.analyze_stage(7, tier, by)) == keys.AnalyzeKey(7, tier, by)
        assert keys.parse_decoded(keys.decoded_stage(7, tier)) == keys.DecodedKey(7, tier)
    for method in ("pca", "tsne", "umap"):
        assert keys.parse_reduce(keys.reduce_stage(method)) == method
    for other in ("B", "ft.v2"):
        assert keys.parse_compare(keys.compare_stage(other)) == other
    for name in ("ctc_greedy", "ctc_forced", "mine.v1"):
        assert keys.parse_labels(keys.labels_stage(name)) == name
    for rule in ("gap", "original"):
        assert keys.parse_disagreement(keys.disagreement_stage(rule)) == rule
    assert keys.parse_metadata(keys.metadata_stage("gender_csv", "abc")) == ("gender_csv", "abc")
    assert keys.parse_metadata("metadata.utt2gender") == ("utt2gender", None)  # before files were keyed by path
    assert keys.parse_analyze("reduce.pca") is None and keys.parse_reduce("analyze.k5.phone") is None
    assert keys.parse_decoded("transcripts.disagreement.gap") is None
    assert keys.parse_disagreement("transcripts.decoded.k4") is None
    assert [keys.kind(s) for s in ("extract", "analyze.k5.phone.by.x", "metadata.a.b")] == ["extract", "analyze",
                                                                                              "metadata"]
    assert keys.layer_shard(-1) == keys.shard_layer(-1) == -1


def test_every_commit_parses_and_records_its_parameters_hash_under_one_name(written):
    root, _ = written
    kinds = set()
    for (_, stage, shard), rec in Warehouse(root).commits().items():
        kind = keys.kind(stage)
        kinds.add(kind)
        parsed = {keys.ANALYZE: keys.parse_analyze, keys.REDUCE: keys.parse_reduce, keys.COMPARE: keys.parse_compare,
                  keys.METADATA: keys.parse_metadata,
                  keys.TRANSCRIPTS: lambda s: keys.parse_decoded(s) or keys.parse_disagreement(s)}.get(kind)
        assert kind in keys.KINDS or stage == "test.ctc_greedy", stage
        if parsed is not None:
            assert parsed(stage) is not None, stage
        if kind in (keys.ANALYZE, keys.REDUCE, keys.COMPARE, keys.TRANSCRIPTS):
            assert "fingerprint" not in rec and not isinstance(rec.get("params"), str), stage
            assert len(keys.params_sha256(rec)) == 64, stage
    assert kinds >= {keys.EXTRACT, keys.METADATA, keys.ANALYZE, keys.REDUCE, keys.COMPARE, keys.TRANSCRIPTS}


def test_older_names_of_the_parameters_hash_are_read():
    assert keys.params_sha256({"params": "abc"}) == "abc"  # analyze, transcripts
    assert keys.params_sha256({"params": {"n": 5}, "fingerprint": "def"}) == "def"  # reduce, compare
    assert keys.params_sha256({"params_sha256": "ghi", "params": {"n": 5}}) == "ghi"
    assert keys.params_sha256({"items": 3}) is None


def test_transcripts_without_a_clustering_says_so_and_writes_the_disagreement(written):
    root, warnings = written
    assert any("no clustering" in w and "analyze" in w for w in warnings), warnings
    con = Warehouse(root).connect()
    assert con.execute("select count(*) from decoded where run = 'a'").fetchone()[0] > 0  # after analyze


def test_readme_column_table_is_the_schemas():
    """The README's table of views and columns is generated from schemas.TABLES: regenerate it with
    `python -c "from pipeline.warehouse import schemas; print(schemas.columns_markdown())"` after a change."""
    from pathlib import Path

    from pipeline.warehouse import schemas

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("tests/test_schemas.py keeps it in sync -->\n") + len("tests/test_schemas.py keeps it in sync -->\n")
    end = readme.index("\n<!-- end of generated table -->")
    assert readme[start:end] == schemas.columns_markdown()
