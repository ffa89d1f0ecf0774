"""Ingest of every format, every bad case, and rerun semantics."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.stages.ingest import ingest
from pipeline.warehouse.schemas import REASONS
from pipeline.corpus.sources import SourceSpec
from pipeline.sql import SQL_DIR, run_checks
from pipeline.warehouse import FactsMismatch, Warehouse
from pipeline.testing import BAD_TIMIT_CASES, make_bad_timit, make_hf_parquet, make_textgrid_corpus, make_timit


def _rows(wh: Path, sql: str) -> list[tuple]:
    return Warehouse(wh).connect().sql(sql).fetchall()


def test_timit_matches_an_independent_reading(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    got = _rows(tmp_path / "wh", "select utterance_id, tier, label, start_s, end_s from segments order by all")
    expected = []
    for phn in sorted(corpus.rglob("*.PHN")):
        uid = phn.relative_to(corpus).with_suffix("").as_posix()
        for suffix, tier in ((".PHN", "phone"), (".WRD", "word")):
            for line in phn.with_suffix(suffix).read_text().splitlines():
                a, b, label = line.split()
                expected.append((uid, tier, label, int(a) / 16000, int(b) / 16000))
    assert got == sorted(expected)
    utts = _rows(tmp_path / "wh", "select utterance_id, speaker, n_samples, sample_rate_hz, text, metadata['gender'] from utterances order by 1")
    assert utts[0] == ("TRAIN/DR1/FCJF0/SA1", "FCJF0", 8000, 16000, "She.", "F")
    assert len(utts) == 4
    assert all(v == 0 for v in run_checks(tmp_path / "wh").values())


def test_every_bad_case_is_repaired_or_quarantined_once(tmp_path):
    corpus = make_bad_timit(make_timit(tmp_path / "timit"))
    counts = ingest(SourceSpec("timit", str(corpus)), "bad", str(tmp_path / "wh"))
    quarantined = dict(_rows(tmp_path / "wh", "select utterance_id, reason from quarantine"))
    kept = {r[0] for r in _rows(tmp_path / "wh", "select utterance_id from utterances")}
    for uid, reason in BAD_TIMIT_CASES.items():
        if reason is None:
            assert uid in kept and uid not in quarantined
        else:
            assert quarantined.get(uid) == reason, uid
            assert uid not in kept
    assert not _rows(tmp_path / "wh", "select * from segments where utterance_id in (select utterance_id from quarantine)")
    assert counts["utterances"] + counts["quarantined"] == 4 + len(BAD_TIMIT_CASES)
    assert all(v == 0 for v in run_checks(tmp_path / "wh").values())


def test_repairs_are_lossless(tmp_path):
    corpus = make_bad_timit(tmp_path / "timit")
    ingest(SourceSpec("timit", str(corpus)), "bad", str(tmp_path / "wh"))
    stereo = _rows(tmp_path / "wh", "select source_channels, n_samples from utterances where utterance_id like '%STEREO'")
    assert stereo == [(2, 8000)]
    resampled = _rows(tmp_path / "wh", "select source_sample_rate_hz, n_samples, duration_s from utterances where utterance_id like '%RATE44'")
    assert resampled == [(44100, 8000, 0.5)]
    unsorted = _rows(tmp_path / "wh", "select idx, label, start_s from segments where utterance_id like '%UNSORTED' and tier = 'phone' order by idx")
    assert unsorted == [(0, "sh", 0.0), (1, "iy", 0.25)]
    clipped = _rows(tmp_path / "wh", "select max(end_s) from segments where utterance_id like '%OVERHANG'")
    assert clipped == [(0.5,)]


def test_rerun_replaces_and_never_duplicates(tmp_path, monkeypatch):
    corpus = make_timit(tmp_path / "timit")
    wh = tmp_path / "wh"
    ingest(SourceSpec("timit", str(corpus)), "one", str(wh), shard_size=1)
    first = _rows(wh, "select * exclude (run) from segments order by all")
    # a crash after the last shard's files were written but before its commit: the shard is redone, not read twice
    real, calls = Warehouse.commit, []

    def commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed before commit")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        ingest(SourceSpec("timit", str(corpus)), "t", str(wh), shard_size=1)
    monkeypatch.undo()
    counts = ingest(SourceSpec("timit", str(corpus)), "t", str(wh), shard_size=1)
    assert counts["shards"] == 1 and counts["skipped_shards"] == 3
    assert _rows(wh, "select * exclude (run) from segments where run = 't' order by all") == first
    ingest(SourceSpec("timit", str(corpus)), "t", str(wh), shard_size=1, overwrite=True)
    assert _rows(wh, "select * exclude (run) from segments where run = 't' order by all") == first


def test_a_run_refuses_other_facts(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    with pytest.raises(FactsMismatch, match="limit"):
        ingest(SourceSpec("timit", str(corpus), limit=2), "t", str(tmp_path / "wh"))
    with pytest.raises(FactsMismatch, match="shard_size"):
        ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"), shard_size=2)


def test_textgrid_folder(tmp_path):
    corpus = make_textgrid_corpus(tmp_path / "tg")
    (corpus / "84" / "84-121123-0009.flac").write_bytes((corpus / "84" / "84-121123-0001.flac").read_bytes())
    ingest(SourceSpec("textgrid", str(corpus)), "tg", str(tmp_path / "wh"))
    utts = _rows(tmp_path / "wh", "select utterance_id, speaker, text from utterances order by 1")
    assert utts == [("84-121123-0001", "84", "hello"), ("84-121123-0002", "84", "hello")]
    phones = _rows(tmp_path / "wh", "select label, start_s, end_s from segments where tier = 'phone' and utterance_id = '84-121123-0001' order by idx")
    assert phones == [("sil", 0.0, 0.375), ("HH", 0.375, 0.5625), ("AH0", 0.5625, 0.75)]
    assert _rows(tmp_path / "wh", "select utterance_id, reason from quarantine") == [("84-121123-0009", "missing_alignment")]


def test_hf_parquet_with_detail_columns(tmp_path):
    path = make_hf_parquet(tmp_path / "hf" / "train.parquet", n=3)
    ingest(SourceSpec("hf", str(path)), "hf", str(tmp_path / "wh"))
    segs = _rows(tmp_path / "wh", "select utterance_id, tier, label, start_s, end_s, source from segments where utterance_id = 'utt001' order by tier, idx")
    assert segs == [
        ("utt001", "phone", "a", 0.0, 0.225, "hf_phonetic_detail"),
        ("utt001", "phone", "b", 0.225, 0.45, "hf_phonetic_detail"),
        ("utt001", "word", "ab", 0.0, 0.45, "hf_phonetic_detail"),
    ]
    meta = _rows(tmp_path / "wh", "select speaker, metadata['gender'] from utterances where utterance_id = 'utt001'")
    assert meta == [("spk1", "f")]


def test_hf_repeated_ids_are_quarantined_not_duplicated(tmp_path):
    path = make_hf_parquet(tmp_path / "hf" / "train.parquet", n=4, ids=["SA1", "SA1", "SA2", "SA2"])
    ingest(SourceSpec("hf", str(path)), "dup", str(tmp_path / "wh"))
    assert _rows(tmp_path / "wh", "select utterance_id from utterances order by 1") == [("SA1",), ("SA2",)]
    q = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine order by 1")
    assert [r[:2] for r in q] == [("SA1#dup1", "duplicate_id"), ("SA2#dup3", "duplicate_id")]
    assert "--id-column speaker_id,id" in q[0][2]
    # keyed by two columns, every row is kept
    ingest(SourceSpec("hf", str(path), id_column="speaker_id,id"), "dup2", str(tmp_path / "wh"))
    ids = _rows(tmp_path / "wh", "select utterance_id from utterances where run = 'dup2' order by 1")
    assert ids == [("spk0/SA1",), ("spk0/SA2",), ("spk1/SA1",), ("spk1/SA2",)]


def test_sharded_ranks_partition_the_stream(tmp_path):
    corpus = make_bad_timit(make_timit(tmp_path / "timit"))
    ingest(SourceSpec("timit", str(corpus)), "one", str(tmp_path / "wh"), shard_size=3)
    for rank in range(2):
        ingest(SourceSpec("timit", str(corpus)), "two", str(tmp_path / "wh"), shard_size=3, rank=rank, world_size=2)
    cols = "utterance_id, tier, idx, label, start_s, end_s"
    assert _rows(tmp_path / "wh", f"select {cols} from segments where run = 'one' order by all") == _rows(
        tmp_path / "wh", f"select {cols} from segments where run = 'two' order by all"
    )


def test_quarantine_check_reads_the_one_list_of_reasons(tmp_path):
    """The check reads the quarantine_reasons view, made from schemas.REASONS: no copied list to drift."""
    from pipeline.warehouse import Warehouse

    con = Warehouse(tmp_path).connect()
    assert dict(con.sql("select reason, meaning from quarantine_reasons").fetchall()) == REASONS
    check = (SQL_DIR / "checks" / "quarantine_known_reason.sql").read_text()
    con.execute("create or replace view quarantine as select 'u' as utterance_id, 'ingest' as stage, "
                "'made_up' as reason, '' as detail union all select 'v', 'ingest', 'too_short', ''")
    assert con.sql(check).fetchall() == [("u", "ingest", "made_up", "")]


def test_files_are_hive_partitioned_and_typed(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    part, = (tmp_path / "wh" / "segments" / "run=t").glob("part-00000*.parquet")
    assert pq.read_schema(part).field("start_s").type == "double"
    assert not list((tmp_path / "wh" / "_tmp").glob("*"))
