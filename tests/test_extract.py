"""Extraction end to end: frame geometry and labels, kill-and-resume, two ranks under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages.extract import ExtractConfig, extract, frame_labels
from pipeline.corpus.records import Segment
from pipeline.warehouse import Warehouse
from pipeline.sql import run_checks
from pipeline.testing import make_bad_timit, make_timit, write_timit_utt

REPO = Path(__file__).resolve().parents[1]

PY = sys.executable


def _frames(wh: Path, run: str) -> list[tuple]:
    con = Warehouse(wh).connect()
    return con.sql(
        "select layer, utterance_id, frame, time_s, phone, word, vector from frames where run = $run order by all",
        params={"run": run},
    ).fetchall()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "timit"
    return make_bad_timit(make_timit(root))


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> tuple[Path, list[tuple]]:
    wh = tmp_path_factory.mktemp("baseline")
    extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=2, progress=False))
    return wh, _frames(wh, "r")


def test_frames_match_an_independent_computation(corpus, baseline):
    wh, rows = baseline
    assert all(v == 0 for v in run_checks(wh).values())
    con = Warehouse(wh).connect()
    utts = dict(con.sql("select utterance_id, n_samples from utterances").fetchall())
    assert len(utts) == 8
    by_utt: dict[str, list[tuple]] = {}
    for layer, uid, frame, time_s, phone, word, vector in rows:
        if layer == 1:
            by_utt.setdefault(uid, []).append((frame, time_s, phone))
    for uid, frames in by_utt.items():
        n = utts[uid]
        assert len(frames) == (n - 400) // 320 + 1  # wav2vec2: floor((n - 400) / 320) + 1
        lines = [line.split() for line in (corpus / (uid + ".PHN")).read_text().splitlines()]
        rate = 44100 if uid.endswith("RATE44") else 16000
        for frame, time_s, phone in frames:
            centre_s = (320 * frame + 200) / 16000
            assert time_s == pytest.approx(centre_s, abs=1e-6)
            holding = [lab for a, b, lab in lines if int(a) / rate <= centre_s < min(int(b) / rate, n / 16000)]
            assert phone == (holding[0] if holding else None), (uid, frame)


def test_vectors_are_float16_of_the_model_width(baseline):
    wh, rows = baseline
    dims = {layer: len(vec) for layer, *_, vec in rows}
    assert dims == {-2: 80, -1: 256, 0: 256, 1: 256, 2: 256, 3: 256, 4: 256}  # -2: the log-mel layer
    part = next((wh / "frames" / "run=r" / "layer=3").glob("*.parquet"))
    import pyarrow.parquet as pq

    from pipeline.warehouse import vectors

    stored = pq.read_schema(part).field("vector")
    assert vectors.type_of(stored) == (256, "float16")
    assert stored.type == pa.binary(2 * 256)  # fixed-size binary: the float16 matrix's own bytes


@settings(max_examples=200, deadline=None)
@given(
    bounds=st.lists(st.integers(0, 2000), min_size=2, max_size=12, unique=True).map(sorted),
    n_frames=st.integers(0, 120),
)
def test_frame_labels_hold_the_centre(bounds, n_frames):
    segs = [Segment("phone", i, f"p{i}", a / 1000, b / 1000, "t") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    centres = (320 * np.arange(n_frames) + 200) / 16000
    got = frame_labels(segs, "phone", centres)
    for c, label in zip(centres, got):
        holding = [s.label for s in segs if s.start_s <= c < s.end_s]
        assert label == (holding[0] if holding else None)


@pytest.fixture(scope="module")
def baseline_cli(corpus, tmp_path_factory) -> list[tuple]:
    """An uninterrupted run in a subprocess with the environment of the crash tests (same threads,
    so vectors must be bitwise equal)."""
    wh = tmp_path_factory.mktemp("baseline_cli")
    done = subprocess.run(_extract_cmd(corpus, wh), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return _frames(wh, "r")


def _extract_cmd(corpus: Path, wh: Path, run: str = "r") -> list[str]:
    return [PY, "-m", "pipeline", "extract", "--format", "timit", "--corpus", str(corpus), "--run", run,
            "--warehouse", str(wh), "--shard-size", "2", "--no-progress"]


def _env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    env.pop("PIPELINE_KILL_AT", None)
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["after_rename:3", "before_commit:1", "before_commit:4", "after_rename:40"])
def test_killed_run_resumes_to_the_same_rows(corpus, baseline_cli, tmp_path, kill_at):
    """SIGKILL between a file's rename and its commit, and just before a commit; rerun finishes."""
    wh = tmp_path / "wh"
    killed = subprocess.run(_extract_cmd(corpus, wh), env=_env(PIPELINE_KILL_AT=kill_at), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    resumed = subprocess.run(_extract_cmd(corpus, wh), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already committed" in resumed.stdout
    assert _frames(wh, "r") == baseline_cli
    assert all(v == 0 for v in run_checks(wh).values())


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(corpus, baseline_cli, tmp_path):
    wh = tmp_path / "wh"
    proc = subprocess.Popen(_extract_cmd(corpus, wh), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs = wh / "_commits" / "run=r"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once two shards are committed
        if len(list(logs.glob("extract/*.json"))) >= 2:  # commit objects (pipeline/warehouse/__init__.py)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_extract_cmd(corpus, wh), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _frames(wh, "r") == baseline_cli


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_rows_of_one(corpus, baseline_cli, tmp_path):
    wh = tmp_path / "wh"
    torchrun = Path(PY).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pipeline", "--", *_extract_cmd(corpus, wh)[3:]]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 utterances" in done.stdout
    assert _frames(wh, "r") == baseline_cli
    import json

    commits = [json.loads(p.read_text()) for p in (wh / "_commits" / "run=r" / "extract").glob("*.json")]
    assert {c["rank"] for c in commits} == {0, 1}  # both ranks committed shards of their own


def test_extract_refuses_other_facts(corpus, baseline):
    from pipeline.warehouse import FactsMismatch

    wh, _ = baseline
    with pytest.raises(FactsMismatch, match="layers"):
        extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=2,
                              layers="1,2", progress=False))


# ---------------------------------------------------------------- model errors: out of memory is retried, never quarantined


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return make_timit(tmp_path_factory.mktemp("small") / "timit")


def _extract_small(corpus: Path, wh: Path, **kw):
    return extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=2,
                                 layers="-1,1", max_batch_size=1, progress=False, **kw))


@pytest.fixture(scope="module")
def small_baseline(small_corpus, tmp_path_factory) -> list[tuple]:
    wh = tmp_path_factory.mktemp("small_baseline")
    _extract_small(small_corpus, wh)
    return _frames(wh, "r")


def test_parallel_layer_writers_and_batches_give_the_rows_of_one_at_a_time(small_corpus, small_baseline, tmp_path,
                                                                           monkeypatch):
    """Several frames-writer threads (the GPU default) and padded batches (the CPU default) store the rows
    of one writer and batch size 1, within float16 rounding of float32 batched-vs-alone differences."""
    import pipeline.stages.extract as stage

    monkeypatch.setattr(stage, "writer_threads", lambda device_type, n_layers: 2)
    extract(ExtractConfig(run="r", format="timit", corpus=str(small_corpus), warehouse=str(tmp_path / "wh"),
                          shard_size=2, layers="-1,1", max_batch_size=32, progress=False))
    rows = _frames(tmp_path / "wh", "r")
    assert [r[:6] for r in rows] == [r[:6] for r in small_baseline]
    got = np.array([r[6] for r in rows], np.float32)
    want = np.array([r[6] for r in small_baseline], np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3)


def _failing_model(monkeypatch, make_error, times: int | None, only: str | None = None) -> list[int]:
    """pipeline.model.extract raising `make_error()` on its first `times` calls (None: always), or on
    every call for the waveform of `only` samples."""
    import pipeline.model

    real, calls = pipeline.model.extract, []

    def flaky(loaded, waves, layers, **kw):
        calls.append(len(waves))
        if (only is None and (times is None or len(calls) <= times)) or (only is not None and len(waves[0]) == only):
            raise make_error()
        return real(loaded, waves, layers, **kw)

    monkeypatch.setattr(pipeline.model, "extract", flaky)
    return calls


OUT_OF_MEMORY = {
    "torch": lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "runtime": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                                    "you tried to allocate 1 bytes. Out of memory"),
    "memory": lambda: MemoryError(),
}


@pytest.mark.parametrize("kind", OUT_OF_MEMORY)
def test_out_of_memory_once_is_retried_to_the_same_rows(small_corpus, small_baseline, tmp_path, monkeypatch, kind):
    calls = _failing_model(monkeypatch, OUT_OF_MEMORY[kind], times=1)
    counts = _extract_small(small_corpus, tmp_path / "wh")
    assert counts.quarantined == 0 and len(calls) == 5  # 4 utterances alone, the first one twice
    assert _frames(tmp_path / "wh", "r") == small_baseline
    assert not _rows(tmp_path / "wh", "select * from quarantine")


def test_out_of_memory_always_leaves_the_shard_for_the_rerun(small_corpus, small_baseline, tmp_path, monkeypatch):
    from pipeline.stages.extract import ModelOutOfMemory

    _failing_model(monkeypatch, OUT_OF_MEMORY["torch"], times=None)
    with pytest.raises(ModelOutOfMemory, match=r"run 'r', shard 0: .* utterance 'TRAIN/DR1/FCJF0/SX139'.*"
                                               r"not committed: rerunning .* redoes it.*--max-batch-samples"):
        _extract_small(small_corpus, tmp_path / "wh")
    assert not Warehouse(tmp_path / "wh").commits("r")  # no model_error quarantine committed
    monkeypatch.undo()
    counts = _extract_small(small_corpus, tmp_path / "wh")
    assert (counts.skipped_shards, counts.quarantined) == (0, 0)
    assert _frames(tmp_path / "wh", "r") == small_baseline


def test_a_deterministic_model_error_is_that_utterances_quarantine(small_corpus, small_baseline, tmp_path, monkeypatch):
    _failing_model(monkeypatch, lambda: ValueError("weights are NaN"), times=None, only=8000)  # FCJF0/SA1
    counts = _extract_small(small_corpus, tmp_path / "wh")
    assert counts.quarantined == 1
    q = _rows(tmp_path / "wh", "select utterance_id, stage, reason, detail from quarantine")
    assert [r[:3] for r in q] == [("TRAIN/DR1/FCJF0/SA1", "extract", "model_error")] and "weights are NaN" in q[0][3]
    assert _frames(tmp_path / "wh", "r") == [r for r in small_baseline if r[1] != "TRAIN/DR1/FCJF0/SA1"]


def _rows(wh: Path, sql: str) -> list[tuple]:
    return Warehouse(wh).connect().sql(sql).fetchall()


# ---------------------------------------------------------------- long recordings: streamed window by window

LONG = "TRAIN/DR1/FAAA0/SX1"  # 62 s: 3 windows of 30 s (+ 2 s context)
SHORT = ["TRAIN/DR1/FAAA0/SA1", "TRAIN/DR1/FAAA0/SZ1"]  # sorted around it


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long") / "timit"
    write_timit_utt(root, SHORT[0], 12_000)
    write_timit_utt(root, LONG, 62 * 16_000, phones=["h#", "sh", "iy", "s", "aa", "h#"])
    write_timit_utt(root, SHORT[1], 9_000)
    return root


def _extract_long(corpus: Path, wh: Path, **kw):
    return extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=3,
                                 progress=False, **kw))


def _expected_tables(corpus: Path, wh: Path, dtype: str) -> dict[int, "pa.Table"]:
    """The frames tables of the path that holds every output in memory: model.extract + frames_tables."""
    from pipeline.stages.extract import frames_tables
    from pipeline.stages.ingest import prepare
    from pipeline.model import extract as model_extract, load_model, n_windows
    from pipeline.corpus.sources import SourceSpec, iter_items

    loaded = load_model("default", cache_dir=wh / "_models")
    prepared = [prepare(it) for it in iter_items(SourceSpec("timit", str(corpus)))]
    assert [n_windows(loaded, len(p.wave)) for p in prepared] == [1, 3, 1]
    outputs = model_extract(loaded, [p.wave for p in prepared], loaded.valid_layers)
    dims = {layer: loaded.layer_dim(layer) for layer in loaded.valid_layers}
    return frames_tables(prepared, outputs, dims, loaded.geometry, dtype)


@pytest.mark.parametrize("dtype", ["float16", pytest.param("float32", marks=pytest.mark.slow)])
def test_a_long_recording_is_streamed_to_the_same_rows(long_corpus, tmp_path, monkeypatch, dtype):
    import pyarrow.parquet as pq

    import pipeline.model

    real_windows, windows_of, writes = pipeline.model.extract_windows, [], []
    def extract_windows(loaded, wave, layers, **kw):
        windows_of.append(len(wave))
        return real_windows(loaded, wave, layers, **kw)

    monkeypatch.setattr(pipeline.model, "extract_windows", extract_windows)
    real_open = Warehouse.open_writer

    def open_writer(self, table, *args, **kw):
        w = real_open(self, table, *args, **kw)
        real_write = w.write
        w.write = lambda data: writes.append((kw.get("layer"), data.num_rows)) or real_write(data)
        return w

    monkeypatch.setattr(Warehouse, "open_writer", open_writer)
    wh = tmp_path / "wh"
    counts = _extract_long(long_corpus, wh, dtype=dtype)
    assert (counts.utterances, counts.quarantined) == (3, 0)
    assert windows_of == [62 * 16_000]  # only the long one streams
    # per layer: the short one before it, its 3 windows, the short one after it; each written as it came
    assert [n for layer, n in writes if layer == 1] == [37, 1500, 1500, 99, 27]
    expected = _expected_tables(long_corpus, wh, dtype)
    for layer, table in expected.items():
        (path,) = [p for p in Warehouse(wh).committed_files("frames", "r") if f"/layer={layer}/part-00000." in p]
        got = pq.read_table(wh / path)
        assert got.equals(table), layer
    keys = [(u, f) for u, f in zip(got["utterance_id"].to_pylist(), got["frame"].to_pylist())]
    assert keys == sorted(keys) and [u for u, _ in keys].count(LONG) == (62 * 16_000 - 400) // 320 + 1
    assert all(v == 0 for v in run_checks(wh).values())


def test_a_model_error_on_a_long_recording_is_its_quarantine(long_corpus, tmp_path, monkeypatch):
    import pipeline.model

    real_windows = pipeline.model.extract_windows

    def broken(loaded, wave, layers, **kw):
        for n, block in enumerate(real_windows(loaded, wave, layers, **kw)):
            if n == 2:
                raise ValueError("a window the model cannot take")
            yield block

    monkeypatch.setattr(pipeline.model, "extract_windows", broken)
    wh = tmp_path / "wh"
    counts = _extract_long(long_corpus, wh, layers="0,1")
    assert (counts.utterances, counts.quarantined) == (2, 1)
    q = _rows(wh, "select utterance_id, reason, detail from quarantine")
    assert [r[:2] for r in q] == [(LONG, "model_error")] and "a window the model cannot take" in q[0][2]
    assert _rows(wh, "select distinct utterance_id from frames order by 1") == [(SHORT[0],), (SHORT[1],)]
    assert _rows(wh, "select utterance_id from utterances order by 1") == [(SHORT[0],), (SHORT[1],)]
    assert not list((wh / "_tmp").glob("*"))  # the aborted writers left nothing behind


@pytest.fixture(scope="module")
def long_clean(long_corpus, tmp_path_factory) -> list[tuple]:
    wh = tmp_path_factory.mktemp("long_clean")
    _extract_long(long_corpus, wh, layers="0,1")
    return _frames(wh, "r")


@pytest.mark.parametrize("times", [1, None])
def test_out_of_memory_on_a_long_recording(long_corpus, long_clean, tmp_path, monkeypatch, times):
    import torch

    import pipeline.model
    from pipeline.stages.extract import ModelOutOfMemory

    real_windows, calls = pipeline.model.extract_windows, []

    def flaky(loaded, wave, layers, **kw):
        calls.append(1)
        for n, block in enumerate(real_windows(loaded, wave, layers, **kw)):
            if n == 1 and (times is None or len(calls) <= times):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            yield block

    monkeypatch.setattr(pipeline.model, "extract_windows", flaky)
    wh = tmp_path / "wh"
    if times is None:
        with pytest.raises(ModelOutOfMemory, match=f"shard 0: .*{LONG}.*rerunning the same command redoes it"):
            _extract_long(long_corpus, wh, layers="0,1")
        assert not Warehouse(wh).commits("r") and not list((wh / "_tmp").glob("*"))
        return
    counts = _extract_long(long_corpus, wh, layers="0,1")
    assert (counts.utterances, counts.quarantined, len(calls)) == (3, 0, 2)
    assert _frames(wh, "r") == long_clean
