"""Utterance attributes from files: Kaldi utt2<key> and CSV, read before utterances.metadata."""

from __future__ import annotations

import pytest

from pipeline.analyze import AnalyzeConfig, analyze
from pipeline.extract import ExtractConfig, extract
from pipeline.metadata import attach_metadata, read_attributes
from pipeline.sql import query
from pipeline.warehouse import Warehouse


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
