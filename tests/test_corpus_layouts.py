"""Real corpus layouts and bad corpus paths: every file ends as its own rows or a quarantine row, never
as another file's rows (issue 10: repeated stems across speaker folders, case twins, symlinked folders,
a row that cannot be read, audio paths that are not regular files)."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import audio
from pipeline.stages.ingest import ingest
from pipeline.corpus.records import Quarantine
from pipeline.corpus.sources import SourceSpec, iter_items
from pipeline.warehouse import Warehouse
from pipeline.sql import run_checks
from pipeline.testing import audio_bytes, make_hf_parquet, make_timit, tone, write_timit_utt

GRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = {end}
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = {end}
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = {end}
            text = "{label}"
"""


def _rows(wh: Path, sql: str) -> list[tuple]:
    return Warehouse(wh).connect().sql(sql).fetchall()


def _utt(folder: Path, stem: str, n_samples: int, label: str | None) -> None:
    """`stem.wav` of n_samples, with a one-interval `stem.TextGrid` labelled `label` (None: no grid)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.wav").write_bytes(audio_bytes(tone(n_samples)))
    if label is not None:
        (folder / f"{stem}.TextGrid").write_text(GRID.format(end=n_samples / 16000, label=label))


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging forever when a read blocks (a fifo)."""
    def expired(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- repeated stems (L2-ARCTIC style)


def test_repeated_stems_across_speaker_folders_keep_their_own_labels(tmp_path):
    corpus = tmp_path / "l2"
    _utt(corpus / "spk1", "a", 8000, "spk1_a")
    _utt(corpus / "spk1", "b", 8800, "spk1_b")
    _utt(corpus / "spk2", "a", 9600, None)
    _utt(corpus / "spk2", "b", 10400, "spk2_b")
    counts = ingest(SourceSpec("textgrid", str(corpus)), "l2", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (3, 1)
    assert _rows(tmp_path / "wh", "select utterance_id, speaker, n_samples from utterances order by 1") == [
        ("spk1/a", "spk1", 8000), ("spk1/b", "spk1", 8800), ("spk2/b", "spk2", 10400)]
    assert _rows(tmp_path / "wh", "select utterance_id, label from segments order by 1") == [
        ("spk1/a", "spk1_a"), ("spk1/b", "spk1_b"), ("spk2/b", "spk2_b")]
    q = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine")
    assert [r[:2] for r in q] == [("spk2/a", "missing_alignment")]
    assert "spk2/a.wav" in q[0][2]
    assert all(v == 0 for v in run_checks(tmp_path / "wh").values())


def test_flat_textgrid_folder_keys_by_stem(tmp_path):
    corpus = tmp_path / "flat"
    _utt(corpus, "a", 8000, "x")
    _utt(corpus, "b", 8800, None)
    items = list(iter_items(SourceSpec("textgrid", str(corpus))))
    assert [(it.utterance_id, it.speaker, it.error and it.error.reason) for it in items] == [
        ("a", None, None), ("b", None, "missing_alignment")]


def test_librispeech_names_keep_their_stem_and_a_copy_is_a_duplicate(tmp_path):
    corpus = tmp_path / "ls"
    _utt(corpus / "84" / "121123", "84-121123-0001", 8000, "x")
    _utt(corpus / "copy", "84-121123-0001", 8000, None)
    items = list(iter_items(SourceSpec("textgrid", str(corpus))))
    assert [(it.utterance_id, it.speaker, it.error and it.error.reason) for it in items] == [
        ("84-121123-0001", "84", None), ("84-121123-0001#dup1", "84", "missing_alignment")]


def test_audio_twins_in_one_folder_are_ambiguous(tmp_path):
    corpus = tmp_path / "tw"
    _utt(corpus / "spk1", "a", 8000, "x")
    (corpus / "spk1" / "a.flac").write_bytes(audio_bytes(tone(8000), fmt="FLAC"))
    _utt(corpus / "spk1", "b", 8000, "y")
    ingest(SourceSpec("textgrid", str(corpus)), "tw", str(tmp_path / "wh"))
    assert _rows(tmp_path / "wh", "select utterance_id from utterances") == [("spk1/b",)]
    (uid, reason, detail), = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine")
    assert (uid, reason) == ("spk1/a", "duplicate_file")
    assert "spk1/a.flac" in detail and "spk1/a.wav" in detail


# ---------------------------------------------------------------- TIMIT: case twins, symlinks, lower case


def test_timit_case_twins_are_quarantined_naming_both(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    folder = corpus / "TRAIN" / "DR1" / "FCJF0"
    (folder / "SA2.WAV").write_bytes((folder / "SA1.WAV").read_bytes())
    (folder / "SA2.wav").write_bytes(audio_bytes(tone(4000)))
    (folder / "SA2.PHN").write_text("0 4000 sh\n")
    if len(list(folder.glob("SA2.*"))) < 3:
        pytest.skip("case-insensitive file system")
    counts = ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (4, 1)
    (uid, reason, detail), = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine")
    assert (uid, reason) == ("TRAIN/DR1/FCJF0/SA2", "duplicate_file")
    assert "SA2.WAV" in detail and "SA2.wav" in detail
    assert all(v == 0 for v in run_checks(tmp_path / "wh").values())


def test_timit_walks_symlinked_folders_once(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    elsewhere = tmp_path / "elsewhere" / "MXYZ0"
    write_timit_utt(tmp_path / "elsewhere", "MXYZ0/SA1", 8000)
    (corpus / "TRAIN" / "DR1" / "MXYZ0").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "TRAIN" / "DR1" / "loop").symlink_to(corpus / "TRAIN", target_is_directory=True)  # a cycle
    ids = [it.utterance_id for it in iter_items(SourceSpec("timit", str(corpus)))]
    assert ids == ["TRAIN/DR1/FCJF0/SA1", "TRAIN/DR1/FCJF0/SX139", "TRAIN/DR1/MDAB0/SA1",
                   "TRAIN/DR1/MDAB0/SX139", "TRAIN/DR1/MXYZ0/SA1"]


def test_timit_lower_case_names(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    for path in sorted(corpus.rglob("*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.lower()))
    ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    assert _rows(tmp_path / "wh", "select utterance_id, speaker, text from utterances order by 1")[0] == (
        "train/dr1/fcjf0/sa1", "fcjf0", "She.")
    assert _rows(tmp_path / "wh", "select count(distinct utterance_id) from segments") == [(4,)]


# ---------------------------------------------------------------- a bad item is its own quarantine row


def test_hf_row_with_a_null_position_is_quarantined_and_the_stream_goes_on(tmp_path):
    path = make_hf_parquet(tmp_path / "hf" / "train.parquet", n=3)
    table = pq.read_table(path).to_pylist()
    table[1]["phonetic_detail"]["start"] = [0, None]
    pq.write_table(pa.Table.from_pylist(table), path)
    counts = ingest(SourceSpec("hf", str(path)), "hf", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (2, 1)
    (uid, reason, detail), = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine")
    assert (uid, reason) == ("utt001", "alignment_bad_interval")
    assert "utt001" in detail and "phonetic_detail" in detail and "start[1]" in detail


def test_an_hf_row_whose_audio_cell_is_odd_is_its_own_error():
    """The audio cell is fetched when the item is prepared (a rank reads its own rows' audio only):
    an odd cell is that item's quarantine row, the stream goes on."""
    from pipeline.corpus.sources import _hf_item
    from pipeline.stages.ingest import prepare_shard

    item = _hf_item({"id": "u1"}, 0, "train", "c", "audio", ["id"], None, lambda: {"path": 5})
    assert item.utterance_id == "u1" and item.error is None
    good, (bad,) = prepare_shard([item], "ingest")
    assert not good and (bad.utterance_id, bad.reason) == ("u1", "prepare_error") and "TypeError" in bad.detail


def _hf_paths(path: Path, audio_paths: list[str]) -> Path:
    rows = [{"id": f"u{i}", "audio": {"bytes": None, "path": p}} for i, p in enumerate(audio_paths)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_hf_audio_paths_that_are_not_regular_files(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(audio_bytes(tone(8000)))
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    (tmp_path / "folder.wav").mkdir()
    path = _hf_paths(tmp_path / "hf" / "train.parquet",
                     [str(good), "/dev/zero", str(fifo), str(tmp_path / "folder.wav"), str(tmp_path / "gone.wav")])
    with _deadline(60):
        counts = ingest(SourceSpec("hf", str(path)), "hf", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (1, 4)
    q = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine order by 1")
    assert [r[:2] for r in q] == [("u1", "not_a_regular_file"), ("u2", "not_a_regular_file"),
                                  ("u3", "not_a_regular_file"), ("u4", "missing_audio")]
    assert "/dev/zero" in q[0][2] and "fifo" in q[1][2] and "folder" in q[2][2]


def test_fifos_in_a_corpus_folder_are_quarantined_not_skipped(tmp_path):
    corpus = make_timit(tmp_path / "timit")
    folder = corpus / "TRAIN" / "DR1" / "FCJF0"
    os.mkfifo(folder / "SA2.WAV")
    (folder / "SA2.PHN").write_text("0 4000 sh\n")
    write_timit_utt(corpus, "TRAIN/DR1/FCJF0/SA3", 8000)
    (folder / "SA3.TXT").unlink()
    os.mkfifo(folder / "SA3.TXT")  # read while listing: must not block the stream
    with _deadline(60):
        counts = ingest(SourceSpec("timit", str(corpus)), "t", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (4, 2)
    q = _rows(tmp_path / "wh", "select utterance_id, reason, detail from quarantine order by 1")
    assert [r[:2] for r in q] == [("TRAIN/DR1/FCJF0/SA2", "not_a_regular_file"),
                                  ("TRAIN/DR1/FCJF0/SA3", "not_a_regular_file")]
    assert "SA2.WAV is a fifo" in q[0][2] and "SA3.TXT is a fifo" in q[1][2]


def test_audio_over_the_size_cap(tmp_path, monkeypatch):
    data = audio_bytes(tone(8000))
    (tmp_path / "big.wav").write_bytes(data)
    monkeypatch.setenv("PIPELINE_MAX_AUDIO_BYTES", str(len(data)))
    assert audio.read_file(tmp_path / "big.wav") == data  # exactly the cap: read
    monkeypatch.setenv("PIPELINE_MAX_AUDIO_BYTES", str(len(data) - 1))
    with pytest.raises(Quarantine, match="big.wav") as err:
        audio.read_file(tmp_path / "big.wav")
    assert err.value.reason == "audio_too_large"
    monkeypatch.setenv("PIPELINE_MAX_AUDIO_BYTES", "lots")
    with pytest.raises(ValueError, match="PIPELINE_MAX_AUDIO_BYTES"):
        audio.read_file(tmp_path / "big.wav")



def test_a_dataset_of_several_configs_takes_the_split_of_the_one_config_that_has_it(tmp_path):
    """openslr/librispeech_asr's layout (configs all, clean, other; no default): `validation.clean` is in
    `all` only; `clean:test` names the config; `validation` (clean and other) must be named."""
    from pipeline.corpus.sources import parquet_files
    from pipeline.testing.corpora import make_librispeech_hub

    snapshot = str(make_librispeech_hub(tmp_path / "hf"))
    (files,) = parquet_files(snapshot, "validation.clean").values()
    assert [Path(f).relative_to(snapshot).as_posix() for f in files] == ["all/validation.clean/0000.parquet"]
    assert list(parquet_files(snapshot, "clean:test")) == ["test"]
    with pytest.raises(ValueError, match=r"configs all, clean, other: name one.*'validation' is in clean, other"):
        parquet_files(snapshot, "validation")
    with pytest.raises(ValueError, match="has no split 'train'"):
        parquet_files(snapshot, "clean:train")
    ids = [it.utterance_id for it in iter_items(SourceSpec("hf", snapshot, split="validation.clean"))]
    assert ids == ["84-121123-0000", "84-121123-0001", "174-50561-0000"]


def test_an_offline_hub_id_missing_from_the_cache_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache .*hf download --repo-type dataset"):
        list(iter_items(SourceSpec("hf", "nobody-h3/no-such-dataset")))


def test_the_audio_column_is_the_one_the_features_declare(tmp_path):
    """An Audio feature under another name (`speech`) is found from the Parquet metadata `datasets` writes."""
    import datasets

    features = datasets.Features({"speech": datasets.Audio(sampling_rate=16000), "id": datasets.Value("string")})
    rows = [{"speech": {"bytes": audio_bytes(tone(8000)), "path": "a.wav"}, "id": "a"}]
    path = tmp_path / "hf" / "train.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), path)
    counts = ingest(SourceSpec("hf", str(path)), "r", str(tmp_path / "wh"))
    assert (counts["utterances"], counts["quarantined"]) == (1, 0)
    pq.write_table(pa.table({"id": ["a"], "wave": [b"x"]}), path)
    with pytest.raises(ValueError, match=r"no Audio column among \['id', 'wave'\]"):
        list(iter_items(SourceSpec("hf", str(path))))
