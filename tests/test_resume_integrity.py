"""A rerun never mixes two corpora, and one bad item never ends the stream.

Resume skips committed shards; here the corpus changes between a crash and the rerun. The run's
facts hold a corpus fingerprint (first defence) and every skipped shard's ids are compared with
its commit's ids hash (second defence, for a Hub id whose revision is unknown).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.stages.extract
import pipeline.stages.ingest
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.stages.ingest import CorpusChanged, corpus_fingerprint, ingest, prepare_shard
from pipeline.corpus.sources import SourceItem, SourceSpec
from pipeline.warehouse import FactsMismatch, Warehouse
from pipeline.testing import make_hf_parquet, make_textgrid_corpus, make_timit, write_timit_utt

REPO = Path(__file__).resolve().parents[1]

FIRST = "TRAIN/DR1/FAKS0/SA1"  # sorts before the four utterances of make_timit: every shard shifts
REAL_COMMIT = Warehouse.commit


def _rows(wh: Path, sql: str) -> list[tuple]:
    return Warehouse(wh).connect().sql(sql).fetchall()


def _commit_lines(wh: Path, run: str) -> int:
    return len(Warehouse(wh).commit_records(run))


def _crash_at_commit(monkeypatch, n: int) -> None:
    """The n-th commit raises, as a process killed just before it (PIPELINE_KILL_AT=before_commit:n)."""
    calls = []

    def commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("killed before commit")
        return REAL_COMMIT(self, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "commit", commit)


def _ingest(corpus: Path, wh: Path, **kw) -> dict:
    return ingest(SourceSpec("timit", str(corpus)), "r", str(wh), shard_size=2, **kw)


def _extract(corpus: Path, wh: Path, **kw):
    return extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=2,
                                 layers="0,1", progress=False, **kw))


STAGES = {"ingest": _ingest, "extract": _extract}


# ---------------------------------------------------------------- the case, end to end


def test_extract_cli_refuses_to_resume_on_a_changed_corpus(tmp_path):
    """4 TIMIT utterances, shards of 2, killed before the 2nd commit, one utterance added: the rerun
    stored one utterance twice and lost the new one, exit 0. Now it refuses, and --overwrite redoes."""
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    cmd = [sys.executable, "-m", "pipeline", "extract", "--format", "timit", "--corpus", str(corpus), "--run", "r",
           "--warehouse", str(wh), "--shard-size", "2", "--layers", "0,1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, env={**env, "PIPELINE_KILL_AT": "before_commit:2"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    write_timit_utt(corpus, FIRST, 9600)
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr[-2000:]
    assert "corpus" in resumed.stderr and "changed" in resumed.stderr and "--overwrite" in resumed.stderr
    assert _commit_lines(wh, "r") == 1  # nothing was added to the old run
    redone = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True)
    assert redone.returncode == 0, redone.stderr[-2000:]
    per_utt = _rows(wh, "select utterance_id, count(*) from utterances group by 1 order by 1")
    assert [u for u, _ in per_utt] == sorted([FIRST, *(p.relative_to(corpus).with_suffix("").as_posix()
                                                     for p in corpus.rglob("*.PHN") if "FAKS0" not in str(p))])
    assert all(n == 1 for _, n in per_utt)
    frames = _rows(wh, "select count(*), count(distinct (layer, utterance_id, frame)) from frames")
    assert frames[0][0] == frames[0][1] > 0


# ---------------------------------------------------------------- first defence: the corpus fingerprint


@pytest.mark.parametrize("stage", STAGES)
def test_a_changed_corpus_is_refused_by_its_fingerprint(tmp_path, monkeypatch, stage):
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    _crash_at_commit(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        STAGES[stage](corpus, wh)
    monkeypatch.setattr(Warehouse, "commit", REAL_COMMIT)
    before = _rows(wh, "select * from utterances order by all")
    write_timit_utt(corpus, FIRST, 9600)
    with pytest.raises(CorpusChanged, match=r"run 'r'.*the corpus .*timit changed.*--overwrite.*--run") as err:
        STAGES[stage](corpus, wh)
    assert "corpus_fingerprint" in str(err.value) and isinstance(err.value, FactsMismatch)
    assert _commit_lines(wh, "r") == 1 and _rows(wh, "select * from utterances order by all") == before
    STAGES[stage](corpus, wh, overwrite=True)
    ids = [u for (u,) in _rows(wh, "select utterance_id from utterances order by 1")]
    assert len(ids) == 5 and len(set(ids)) == 5 and FIRST in ids


def test_fingerprint_follows_files_sizes_and_times(tmp_path):
    timit = make_timit(tmp_path / "timit")
    spec = SourceSpec("timit", str(timit))
    first = corpus_fingerprint(spec)
    assert first == corpus_fingerprint(spec) and first.startswith("files-sha256:")
    wav = next(timit.rglob("*.WAV"))
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = corpus_fingerprint(spec)
    assert touched != first
    (wav.parent / ".DS_Store").write_bytes(b"x")  # hidden files are not the corpus
    assert corpus_fingerprint(spec) == touched
    (tmp_path / "elsewhere").mkdir()
    write_timit_utt(tmp_path / "elsewhere", "SPK/SA1", 8000)
    (timit / "TRAIN" / "LINKED").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert corpus_fingerprint(spec) != touched  # a linked folder is walked, as the reader walks it

    tg = make_textgrid_corpus(tmp_path / "tg")
    tg_first = corpus_fingerprint(SourceSpec("textgrid", str(tg)))
    next(tg.rglob("*.TextGrid")).unlink()
    assert corpus_fingerprint(SourceSpec("textgrid", str(tg))) != tg_first

    parquet = make_hf_parquet(tmp_path / "hf" / "train.parquet", n=2)
    one = corpus_fingerprint(SourceSpec("hf", str(parquet)))
    make_hf_parquet(parquet, n=3)
    assert corpus_fingerprint(SourceSpec("hf", str(parquet))) != one
    assert corpus_fingerprint(SourceSpec("hf", str(parquet.parent))) is not None

    embedded = corpus_fingerprint(SourceSpec("embedded"))
    assert embedded.startswith("sha256:") and embedded == corpus_fingerprint(SourceSpec("embedded"))


def test_hub_fingerprint_is_the_revision_or_none(monkeypatch):
    import huggingface_hub

    class Info:
        sha = "0123abcd"

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, repo_id, **kw: Info())
    assert corpus_fingerprint(SourceSpec("hf", "someone/corpus")) == "hub:0123abcd"

    def offline(self, repo_id, **kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    assert corpus_fingerprint(SourceSpec("hf", "someone/corpus")) is None


def test_an_unknown_revision_is_not_a_change(tmp_path, monkeypatch):
    """Recorded with a Hub revision, resumed where the Hub cannot say: the ids check guards alone."""
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    _ingest(corpus, wh)
    recorded = Warehouse(wh).read_facts("r")["corpus_fingerprint"]
    monkeypatch.setattr(pipeline.stages.ingest, "corpus_fingerprint", lambda spec: None)
    assert _ingest(corpus, wh)["skipped_shards"] == 2
    assert Warehouse(wh).read_facts("r")["corpus_fingerprint"] == recorded


# ---------------------------------------------------------------- second defence: each skipped shard's ids


@pytest.mark.parametrize("stage", STAGES)
def test_a_changed_shard_is_refused_by_its_ids(tmp_path, monkeypatch, stage):
    """Without a fingerprint (a Hub id offline) the committed shard's ids hash catches the change."""
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    monkeypatch.setattr(getattr(pipeline.stages, stage), "corpus_fingerprint", lambda spec: None)
    _crash_at_commit(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        STAGES[stage](corpus, wh)
    monkeypatch.setattr(Warehouse, "commit", REAL_COMMIT)
    write_timit_utt(corpus, FIRST, 9600)
    with pytest.raises(CorpusChanged, match=r"run 'r': committed shard 0 held other utterances.*--overwrite"):
        STAGES[stage](corpus, wh)
    assert _commit_lines(wh, "r") == 1
    STAGES[stage](corpus, wh, overwrite=True)
    assert len(_rows(wh, "select distinct utterance_id from utterances")) == 5


def test_a_shrunk_corpus_is_refused(tmp_path, monkeypatch):
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    monkeypatch.setattr(pipeline.stages.ingest, "corpus_fingerprint", lambda spec: None)
    _ingest(corpus, wh)
    for path in (corpus / "TRAIN" / "DR1" / "MDAB0").iterdir():
        path.unlink()
    with pytest.raises(CorpusChanged, match=r"shard\(s\) \[1\] lie past the end of the corpus.*--overwrite"):
        _ingest(corpus, wh)


def test_committed_shards_after_a_redone_one_are_checked_first(tmp_path, monkeypatch):
    """Shard 1 lost a file (redone), shards 2 and 3 are committed and changed: the rerun refuses
    before it rewrites shard 1, so the run never holds shards of two corpora."""
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    monkeypatch.setattr(pipeline.stages.ingest, "corpus_fingerprint", lambda spec: None)
    ingest(SourceSpec("timit", str(corpus)), "r", str(wh), shard_size=1)
    lost = wh / next(p for p in Warehouse(wh).committed_files("segments", "r") if "/part-00001." in p)
    lost.unlink()
    write_timit_utt(corpus, "TRAIN/DR1/MAAA0/SA1", 9600)  # between shard 1 and shard 2: 2 and 3 shift
    lines = _commit_lines(wh, "r")
    with pytest.raises(CorpusChanged, match="committed shard 2"):
        ingest(SourceSpec("timit", str(corpus)), "r", str(wh), shard_size=1)
    assert _commit_lines(wh, "r") == lines
    assert not lost.exists()


def test_an_unchanged_corpus_resumes_with_two_ranks(tmp_path):
    corpus, wh = make_timit(tmp_path / "timit"), tmp_path / "wh"
    spec = SourceSpec("timit", str(corpus))
    ingest(spec, "two", str(wh), shard_size=1, rank=1, world_size=2)  # shards 1 and 3 first
    counts = ingest(spec, "two", str(wh), shard_size=1, rank=0, world_size=2)  # checks 1 and 3, writes 0 and 2
    assert counts["shards"] == 2 and counts["skipped_shards"] == 2
    assert len(_rows(wh, "select distinct utterance_id from utterances")) == 4


# ---------------------------------------------------------------- a bad item is quarantined, the stream goes on


def test_an_exception_while_preparing_is_the_items_quarantine(tmp_path, monkeypatch):
    """An error no check foresaw (here a TypeError from the tier code on one item) used to end the
    stream, on every rerun; now it is that item's quarantine row and the stream goes on."""
    corpus = make_timit(tmp_path / "timit")
    real = pipeline.stages.ingest.clean_tier

    def clean_tier(intervals, duration_s, tier, source, name=""):
        if name == "TRAIN/DR1/FCJF0/SX139":
            raise TypeError("unsupported operand type(s) for /: 'NoneType' and 'int'")
        return real(intervals, duration_s, tier, source, name)

    monkeypatch.setattr(pipeline.stages.ingest, "clean_tier", clean_tier)
    counts = ingest(SourceSpec("timit", str(corpus)), "bad", str(tmp_path / "wh"), shard_size=2)
    assert (counts["utterances"], counts["quarantined"]) == (3, 1)
    rows = _rows(tmp_path / "wh", "select utterance_id, stage, reason, detail from quarantine")
    assert rows == [("TRAIN/DR1/FCJF0/SX139", "ingest", "prepare_error",
                     "TypeError: unsupported operand type(s) for /: 'NoneType' and 'int'")]
    kept = [u for (u,) in _rows(tmp_path / "wh", "select utterance_id from utterances order by 1")]
    assert kept == ["TRAIN/DR1/FCJF0/SA1", "TRAIN/DR1/MDAB0/SA1", "TRAIN/DR1/MDAB0/SX139"]


def test_prepare_shard_quarantines_any_exception():
    from pipeline.testing import audio_bytes, tone

    def broken_tiers(rate):
        raise TypeError("unsupported operand type(s) for /: 'NoneType' and 'int'")

    data = audio_bytes(tone(8000))
    items = [SourceItem(i, f"u{i}", "c", lambda: data, load_tiers=broken_tiers if i == 1 else None) for i in range(3)]
    good, bad = prepare_shard(items, "extract")
    assert [p.utterance.utterance_id for p in good] == ["u0", "u2"]
    assert [(b.utterance_id, b.stage, b.reason) for b in bad] == [("u1", "extract", "prepare_error")]
    assert bad[0].detail == "TypeError: unsupported operand type(s) for /: 'NoneType' and 'int'"
