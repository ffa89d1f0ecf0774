"""`--alignments DIR` (issue 16): TextGrids (MFA) and TIMIT .PHN/.WRD files in a tree of their own,
joined to `hf`, `timit` and `textgrid` corpora; MFA's conventions; every bad case a clear error or a
quarantine row."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.corpus.sources import SourceSpec, iter_items
from pipeline.stages.ingest import IngestConfig, ingest, run
from pipeline.testing import audio_bytes, make_hf_parquet, make_timit, tone
from pipeline.testing.corpora import make_l2arctic, mfa_textgrid
from pipeline.warehouse import Warehouse


def _rows(wh: Path, sql: str) -> list[tuple]:
    return Warehouse(wh).connect().sql(sql).fetchall()


def _grids(root: Path, ids_and_samples: dict[str, int], speaker: str | None = None) -> Path:
    for uid, n in ids_and_samples.items():
        path = root / f"{uid}.TextGrid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mfa_textgrid(n / 16000, speaker=speaker))
    return root


def _hf(tmp_path: Path) -> Path:
    """utt000 … utt003 (8000 + 1600 i samples, 3 s long ones below), phonetic_detail columns too."""
    path = make_hf_parquet(tmp_path / "hf" / "train.parquet", n=4)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pylist()
    for i, row in enumerate(table):  # 1.5 s and longer: room for the MFA words
        row["audio"]["bytes"] = audio_bytes(tone(24000 + 1600 * i), fmt="FLAC")
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


def test_hf_joins_mfa_textgrids_by_id_and_quarantines_the_missing(tmp_path):
    corpus = _hf(tmp_path)
    grids = _grids(tmp_path / "mfa", {"spk0/utt000": 24000, "spk1/utt001": 25600, "spk0/utt002": 27200})
    counts = ingest(SourceSpec("hf", str(corpus), alignments=str(grids)), "r", str(tmp_path / "wh"))
    assert counts["reasons"] == {"missing_alignment": 1} and counts["utterances"] == 3
    assert "missing_alignment 1" in run(IngestConfig(run="r2", format="hf", corpus=str(corpus), alignments=str(grids),
                                                     warehouse=str(tmp_path / "wh"))).summary()
    labels = _rows(tmp_path / "wh", "select tier, label, source from segments where run = 'r' and utterance_id = 'utt001' "
                                    "order by tier, idx")
    assert labels[:3] == [("phone", "sil", "textgrid"), ("phone", "HH", "textgrid"), ("phone", "AH0", "textgrid")]
    assert ("word", "<unk>", "textgrid") in labels and ("phone", "spn", "textgrid") in labels
    assert not any(source == "hf_phonetic_detail" for *_, source in labels)  # the folder replaces the columns
    (uid, detail), = _rows(tmp_path / "wh", "select utterance_id, detail from quarantine where run = 'r'")
    assert uid == "utt003" and "mfa" in detail


def test_a_folder_matching_no_utterance_is_one_error_with_examples(tmp_path, capsys):
    corpus = _hf(tmp_path)
    grids = _grids(tmp_path / "mfa", {"84/121123/84-121123-0000": 24000, "84/121123/84-121123-0001": 24000})
    with pytest.raises(ValueError, match=r"matches none .*'utt000', 'utt001'.*'84/121123/84-121123-0000'"):
        list(iter_items(SourceSpec("hf", str(corpus), alignments=str(grids))))
    code = main(["ingest", "--format", "hf", "--corpus", str(corpus), "--alignments", str(grids), "--run", "r",
                 "--warehouse", str(tmp_path / "wh")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and "utt000" in err[0]
    assert not (tmp_path / "wh" / "utterances").exists()  # nothing written


def test_tiers_named_otherwise_say_which_were_found(tmp_path):
    corpus = _hf(tmp_path)
    grid = mfa_textgrid(1.5).replace('name = "phones"', 'name = "MAU"').replace('name = "words"', 'name = "ORT"')
    (tmp_path / "mfa").mkdir()
    (tmp_path / "mfa" / "utt000.TextGrid").write_text(grid)
    with pytest.raises(ValueError, match=r"no phone tier: tiers found \['MAU', 'ORT'\]"):
        list(iter_items(SourceSpec("hf", str(corpus), alignments=str(tmp_path / "mfa"))))


def test_mfa_speaker_prefixed_tiers_and_a_grid_past_the_audio(tmp_path):
    corpus = _hf(tmp_path)
    grids = _grids(tmp_path / "mfa", {"utt000": 24000, "utt002": 27200}, speaker="spk0")
    _grids(tmp_path / "mfa", {"utt001": 25600 + 400})  # 25 ms longer than its audio
    ingest(SourceSpec("hf", str(corpus), alignments=str(grids), limit=3), "r", str(tmp_path / "wh"))
    assert _rows(tmp_path / "wh", "select utterance_id, reason from quarantine") == [("utt001", "alignment_out_of_range")]
    assert _rows(tmp_path / "wh", "select distinct tier from segments order by 1") == [("phone",), ("word",)]


def test_timit_audio_with_lower_case_alignments_elsewhere(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    tree = tmp_path / "align"
    for phn in corpus.rglob("*.PHN"):  # the alignments move to their own lower-case tree
        rel = phn.relative_to(corpus).as_posix().lower()
        for suffix in (".PHN", ".WRD"):
            target = tree / Path(rel).with_suffix(suffix.lower())
            target.parent.mkdir(parents=True, exist_ok=True)
            phn.with_suffix(suffix).rename(target)
    spec = SourceSpec("timit", str(corpus), alignments=str(tree))
    ingest(spec, "r", str(tmp_path / "wh"))
    assert _rows(tmp_path / "wh", "select count(distinct utterance_id), min(source) from segments") == [(4, "timit")]
    assert _rows(tmp_path / "wh", "select count(*) from quarantine") == [(0,)]
    assert _rows(tmp_path / "wh", "select text from utterances limit 1") == [("She.",)]  # .TXT beside the audio


def test_textgrid_audio_with_alignments_elsewhere(tmp_path):
    audio_root, grids = tmp_path / "wav48", tmp_path / "mfa"
    for speaker in ("p225", "p226"):
        (audio_root / speaker).mkdir(parents=True)
        (audio_root / speaker / f"{speaker}_001.wav").write_bytes(audio_bytes(tone(24000)))
    _grids(grids, {"p225/p225_001": 24000})
    counts = ingest(SourceSpec("textgrid", str(audio_root), alignments=str(grids)), "r", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["reasons"]) == (1, {"missing_alignment": 1})
    assert _rows(tmp_path / "wh", "select utterance_id, speaker from utterances") == [("p225/p225_001", "p225")]


def test_l2arctic_pairs_wav_with_textgrid_or_annotation(tmp_path):
    root = make_l2arctic(tmp_path / "l2")
    (root / "ABA" / "annotation").mkdir()  # a hand-corrected twin of one forced alignment: textgrid/ is kept
    (root / "ABA" / "annotation" / "arctic_a0001.TextGrid").write_text(
        (root / "ABA" / "textgrid" / "arctic_a0001.TextGrid").read_text())
    items = list(iter_items(SourceSpec("textgrid", str(root))))
    assert [(it.utterance_id, it.speaker, it.error) for it in items] == [
        (f"{s}/arctic_a000{k}", s, None) for s in ("ABA", "BWC", "HJK") for k in (1, 2)]
    assert items[0].load_text() == "hello world"
