"""Utterance attributes from files: Kaldi utt2<key> and CSV, read before utterances.metadata."""

from __future__ import annotations

import pytest

from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.stages.ingest import ingest
from pipeline.stages.metadata import attach_metadata, read_attributes
from pipeline.corpus.sources import SourceSpec
from pipeline.sql import query
from pipeline.warehouse import Warehouse
from pipeline.testing import make_timit


def test_read_kaldi_and_csv(tmp_path):
    kaldi = tmp_path / "utt2age"
    kaldi.write_text("u1 34\nu2 71 years\n\n")
    assert read_attributes(kaldi).to_pylist() == [{"utterance_id": "u1", "key": "age", "value": "34"},
                                                  {"utterance_id": "u2", "key": "age", "value": "71 years"}]
    csv = tmp_path / "spk.csv"
    csv.write_text("utterance_id,region,age\nu1,north,34\n")
    assert sorted((r["key"], r["value"]) for r in read_attributes(csv).to_pylist()) == [("age", "34"), ("region", "north")]
    bad = tmp_path / "utt2x"
    bad.write_text("lonely\n")
    with pytest.raises(ValueError, match="utt2x:1"):
        read_attributes(bad)
    with pytest.raises(ValueError, match="no utterance_id column"):
        (tmp_path / "n.csv").write_text("id,a\n1,2\n")
        read_attributes(tmp_path / "n.csv")


@pytest.mark.slow
def test_attached_attribute_drives_by_and_wins_over_metadata(tmp_path):
    extract(ExtractConfig(run="m", warehouse=str(tmp_path), limit=40, layers="-1", progress=False))
    con = Warehouse(tmp_path).connect()
    ids = [u for (u,) in con.execute("select utterance_id from utterances where run = 'm' order by 1").fetchall()]
    half = len(ids) // 2
    utt2group = tmp_path / "utt2half"
    utt2group.write_text("".join(f"{u} {'a' if i < half else 'b'}\n" for i, u in enumerate(ids)) + "ghost x\n")
    overrides = tmp_path / "gender.csv"
    overrides.write_text("utterance_id,gender\n" + f"{ids[0]},other\n")
    counts = attach_metadata("m", [str(utt2group), str(overrides)], str(tmp_path))
    assert counts == {"rows": len(ids) + 1, "unknown_ids": 1, "files": 2}
    groups = query(tmp_path, "utterance_groups", {"run": "m", "by": "half"})
    assert groups["grp"].to_pylist() == ["a"] * half + ["b"] * (len(ids) - half)
    gender = dict(zip(*query(tmp_path, "utterance_groups", {"run": "m", "by": "gender"}).to_pydict().values()))
    assert gender[ids[0]] == "other" and gender[ids[1]] in ("female", "male")  # the file wins, metadata fills in
    analyze(AnalyzeConfig(run="m", warehouse=str(tmp_path), k=10, sample_per_label=30, n_iter=5, by="half",
                          probe=False))
    found = {g for (g,) in Warehouse(tmp_path).connect().execute(
        "select distinct group_value from group_metrics where attribute = 'half'").fetchall()}
    assert found == {"a", "b"}
    attach_metadata("m", [str(utt2group)], str(tmp_path))  # a rerun replaces, never duplicates
    n = Warehouse(tmp_path).connect().execute("select count(*) from utterance_attributes where key = 'half'").fetchone()[0]
    assert n == len(ids)


def _attributes(wh) -> list[tuple]:
    return Warehouse(wh).connect().execute(
        "select utterance_id, key, value from utterance_attributes order by all").fetchall()


@pytest.fixture
def timit_run(tmp_path):
    """A run `t` of four TIMIT utterances (two speakers), ingested: no model needed."""
    ingest(SourceSpec("timit", str(make_timit(tmp_path / "timit"))), "t", str(tmp_path / "wh"))
    return tmp_path / "wh"


def test_files_with_one_name_in_two_folders_are_both_stored(tmp_path, timit_run):
    train, test = tmp_path / "train" / "utt2gender", tmp_path / "test" / "utt2gender"
    train.parent.mkdir()
    test.parent.mkdir()
    train.write_text("TRAIN/DR1/FCJF0/SA1 f\nTRAIN/DR1/FCJF0/SX139 f\nghost x\n")
    test.write_text("TRAIN/DR1/MDAB0/SA1 m\nTRAIN/DR1/MDAB0/SX139 m\n")
    counts = attach_metadata("t", [str(train), str(test)], str(timit_run))
    expected = [("TRAIN/DR1/FCJF0/SA1", "gender", "f"), ("TRAIN/DR1/FCJF0/SX139", "gender", "f"),
                ("TRAIN/DR1/MDAB0/SA1", "gender", "m"), ("TRAIN/DR1/MDAB0/SX139", "gender", "m")]
    assert _attributes(timit_run) == expected
    assert counts == {"rows": 4, "unknown_ids": 1, "files": 2}  # the count printed is the count stored
    attach_metadata("t", [str(train)], str(timit_run))  # a rerun of one file replaces its rows only
    assert _attributes(timit_run) == expected
    train.write_text("TRAIN/DR1/FCJF0/SA1 f\n")
    attach_metadata("t", [str(train)], str(timit_run))
    assert _attributes(timit_run) == expected[:1] + expected[2:]


def test_one_attribute_from_two_files_is_an_error(tmp_path, timit_run):
    first, second, third = tmp_path / "utt2gender", tmp_path / "speakers.csv", tmp_path / "more.csv"
    first.write_text("TRAIN/DR1/MDAB0/SA1 m\n")
    attach_metadata("t", [str(first)], str(timit_run))
    second.write_text("utterance_id,gender\nTRAIN/DR1/MDAB0/SX139,m\nTRAIN/DR1/MDAB0/SA1,f\n")
    with pytest.raises(ValueError, match=r"'TRAIN/DR1/MDAB0/SA1' has attribute 'gender' in two files") as err:
        attach_metadata("t", [str(second)], str(timit_run))
    assert str(first) in str(err.value) and str(second) in str(err.value) and "'m'" in str(err.value)
    assert _attributes(timit_run) == [("TRAIN/DR1/MDAB0/SA1", "gender", "m")]  # nothing written
    second.write_text("utterance_id,gender\nTRAIN/DR1/MDAB0/SX139,m\n")
    third.write_text("utterance_id,gender\nTRAIN/DR1/MDAB0/SX139,m\n")
    with pytest.raises(ValueError, match="with the same value"):  # two files of one call
        attach_metadata("t", [str(second), str(third)], str(timit_run))
    assert _attributes(timit_run) == [("TRAIN/DR1/MDAB0/SA1", "gender", "m")]


def test_a_file_attached_under_its_base_name_before_is_replaced_not_doubled(tmp_path, timit_run):
    path = tmp_path / "utt2gender"
    path.write_text("TRAIN/DR1/MDAB0/SA1 m\n")
    wh = Warehouse(timit_run)  # what earlier versions wrote: a commit named by the file's base name
    record = wh.write("utterance_attributes", read_attributes(path), "t", 0, file_prefix="attr_utt2gender")
    wh.commit("t", "metadata.utt2gender", 0, [record], source=str(path.resolve()))
    attach_metadata("t", [str(path)], str(timit_run))
    assert _attributes(timit_run) == [("TRAIN/DR1/MDAB0/SA1", "gender", "m")]


def test_speaker_keyed_files_reach_every_utterance_of_the_speaker(tmp_path):
    """A speaker → L1 table, a Kaldi spk2<key> file and VCTK's speaker-info.txt, joined through
    utterances.speaker; speakers the run lacks are counted, not written."""
    ingest(SourceSpec("timit", str(make_timit(tmp_path / "timit"))), "s", str(tmp_path / "wh"))
    table = tmp_path / "speakers.csv"
    table.write_text("speaker,l1\nFCJF0,Arabic\nMDAB0,Korean\nGHOST,Hindi\n")
    spk2 = tmp_path / "spk2age"
    spk2.write_text("FCJF0 30\n")
    info = tmp_path / "speaker-info.txt"
    info.write_text("ID  AGE  GENDER  ACCENTS  REGION\nMDAB0  23  M    English    Southern  England\n")
    counts = attach_metadata("s", [str(table), str(spk2), str(info)], str(tmp_path / "wh"))
    assert counts == {"rows": 4 + 2 + 2 * 4, "unknown_ids": 1, "files": 3}
    rows = Warehouse(tmp_path / "wh").connect().execute(
        "select utterance_id, key, value from utterance_attributes where run = 's' order by all").fetchall()
    assert ("TRAIN/DR1/FCJF0/SA1", "l1", "Arabic") in rows and ("TRAIN/DR1/MDAB0/SX139", "l1", "Korean") in rows
    assert ("TRAIN/DR1/FCJF0/SX139", "age", "30") in rows
    assert ("TRAIN/DR1/MDAB0/SA1", "region", "Southern England") in rows
    assert ("TRAIN/DR1/MDAB0/SA1", "accents", "English") in rows


def test_vctk_bare_ids_match_p_folders():
    from pipeline.stages.metadata import by_speaker, read_speaker_attributes
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        info = Path(folder) / "speaker-info.txt"
        info.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  F    English    Southern  England\n376  22  M    Indian\n")
        table = read_speaker_attributes(info)
    rows, unmatched = by_speaker(table, {"p225": ["p225/p225_001", "p225/p225_002"]})
    assert unmatched == 3 and rows.num_rows == 8  # 376's three values match no speaker
    assert {r["value"] for r in rows.to_pylist() if r["key"] == "accents"} == {"English"}
