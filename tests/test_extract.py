"""Extraction end to end: frame geometry and labels, kill-and-resume, two ranks under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_bad_timit, make_timit, run_checks
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.extract import ExtractConfig, extract, frame_labels
from pipeline.records import Segment
from pipeline.warehouse import Warehouse

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
    assert dims == {-1: 256, 0: 256, 1: 256, 2: 256, 3: 256, 4: 256}
    part = next((wh / "frames" / "run=r" / "layer=3").glob("*.parquet"))
    import pyarrow.parquet as pq

    vector_type = pq.read_schema(part).field("vector").type
    assert (str(vector_type.value_type), vector_type.list_size) == ("halffloat", 256)


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
        if sum(len(p.read_text().splitlines()) for p in logs.glob("*.jsonl")) >= 2:
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
    ranks = {p.name for p in (wh / "_commits" / "run=r").glob("*.jsonl")}
    assert ranks == {"extract.rank0.jsonl", "extract.rank1.jsonl"}


def test_extract_refuses_other_facts(corpus, baseline):
    from pipeline.warehouse import FactsMismatch

    wh, _ = baseline
    with pytest.raises(FactsMismatch, match="layers"):
        extract(ExtractConfig(run="r", format="timit", corpus=str(corpus), warehouse=str(wh), shard_size=2,
                              layers="1,2", progress=False))
