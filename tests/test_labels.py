"""CTC label tiers written into a run's segments, checked against the model run directly."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from pipeline.algorithms import ctc
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.stages.labels import TierConflict, labels, load_ctc_model
from pipeline.model import normalize_waveform
from pipeline.warehouse import Warehouse
from pipeline.sql import run_checks
from pipeline.testing import CTC_VOCAB as VOCAB, audio_bytes, make_timit, save_tiny_ctc, segments_of, tone

RATE = 16_000


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory) -> Path:
    return save_tiny_ctc(tmp_path_factory.mktemp("ctc") / "model")


@pytest.fixture(scope="module")
def timit_run(tmp_path_factory, ctc_model):
    """(warehouse, corpus folder): the tiny TIMIT corpus extracted with the CTC model's encoder, 2 shards."""
    base = tmp_path_factory.mktemp("run")
    corpus = make_timit(base / "timit")
    wh = base / "wh"
    extract(ExtractConfig(run="r", model=str(ctc_model), format="timit", corpus=str(corpus), warehouse=str(wh),
                          layers="2", shard_size=2, progress=False, device="cpu"))
    return wh, corpus


@torch.inference_mode()
def reference_logits(model_dir: Path, wave: np.ndarray) -> np.ndarray:
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC.from_pretrained(model_dir).eval()
    return model(torch.from_numpy(normalize_waveform(wave))[None]).logits[0].numpy()


def test_greedy_labels_equal_the_models_argmax_frame_by_frame(timit_run, ctc_model):
    wh, corpus = timit_run
    counts = labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu")
    assert (counts.shards, counts.utterances, counts.unlabelled) == (2, 4, {})
    got = segments_of(wh, "ctc_greedy")
    assert sorted(got) == sorted(p.relative_to(corpus).with_suffix("").as_posix() for p in corpus.rglob("*.WAV"))
    seen = set()
    for uid, segs in got.items():
        wave, rate = sf.read(corpus / f"{uid}.WAV", dtype="float32")
        assert rate == RATE
        ids = reference_logits(ctc_model, wave).argmax(-1)
        assert len(ids) == (len(wave) - 400) // 320 + 1
        starts = np.array([s[2] for s in segs])
        for frame, token in enumerate(ids):
            centre = (320 * frame + 200) / RATE
            i = np.searchsorted(starts, centre, side="right") - 1
            idx, label, start_s, end_s, source = segs[i]
            assert start_s <= centre < end_s and source == "ctc_greedy"
            assert label == ("<blank>" if token == 0 else VOCAB[token]), (uid, frame)
            seen.add(label)
        assert [s[0] for s in segs] == list(range(len(segs)))
        assert all(a[3] == b[2] and a[1] != b[1] for a, b in zip(segs, segs[1:]))  # runs merged, no gaps
        assert segs[0][2] == 40 / RATE and segs[-1][3] == (320 * (len(ids) - 1) + 360) / RATE
    assert len(seen) >= 5  # the check compares real variety, not one constant label


def test_segments_view_holds_corpus_and_ctc_tiers_and_checks_pass(timit_run, ctc_model):
    wh, _ = timit_run
    labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu")
    labels("r", str(ctc_model), warehouse=str(wh), source="forced", device="cpu")
    con = Warehouse(wh).connect()
    tiers = dict(con.sql("select tier || '/' || source, count(distinct utterance_id) from segments "
                         "group by 1").fetchall())
    assert tiers == {"phone/timit": 4, "word/timit": 4, "ctc_greedy/ctc_greedy": 4,
                     "ctc_char/ctc_forced": 4, "ctc_word/ctc_forced": 4}
    names = sorted(p.name.split(".")[0] for p in (wh / "segments" / "run=r").iterdir())  # <prefix>-<shard>.<writer>
    assert names == [f"{prefix}-{shard:05d}" for prefix in ("ctc_forced", "ctc_greedy", "part") for shard in (0, 1)]
    assert set(run_checks(wh).values()) == {0}


def test_rerun_skips_or_replaces_and_never_duplicates(timit_run, ctc_model):
    wh, _ = timit_run
    first = labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu")
    before = segments_of(wh, "ctc_greedy")
    again = labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu")
    assert (again.shards, again.skipped_shards, again.segments) == (0, 2, 0)
    assert segments_of(wh, "ctc_greedy") == before
    # other parameters (short windows) would mix two settings in one tier: refused, unless the tier is
    # replaced, when every shard is rewritten under the same file names
    with pytest.raises(TierConflict, match=r"run 'r': tier 'ctc_greedy' was made by .* windows 30.0 s .* "
                                           r"windows 0.2 s .*--tier-name NEW.*--overwrite-tier"):
        labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu", max_chunk_s=0.2, context_s=0.1)
    assert segments_of(wh, "ctc_greedy") == before
    rewritten = labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu",
                       max_chunk_s=0.2, context_s=0.1, overwrite_tier=True)
    assert (rewritten.shards, rewritten.skipped_shards) == (2, 0)
    n = Warehouse(wh).connect().sql("select count(*) from segments where tier = 'ctc_greedy'").fetchall()[0][0]
    assert n == rewritten.segments and first.shards + first.skipped_shards == 2
    assert set(run_checks(wh).values()) == {0}
    # a shard whose commit is gone is redone; nothing else is
    for obj in (wh / "_commits" / "run=r" / "labels.ctc_greedy").glob("*.json"):
        obj.unlink()  # the commit objects, and the manifest compacted from them
    (wh / "_manifests" / "run=r.json").unlink(missing_ok=True)
    redone = labels("r", str(ctc_model), warehouse=str(wh), source="greedy", device="cpu")
    assert (redone.shards, redone.skipped_shards) == (2, 0)
    assert segments_of(wh, "ctc_greedy") == before


def test_forced_tiers_spell_the_normalised_text(tmp_path, ctc_model):
    texts = {"hello": "Hello, world!", "she": "She.", "long": "she sells sea shells " * 4}
    rows = [{"id": uid, "audio": {"bytes": audio_bytes(tone(n, seed=i), fmt="FLAC"), "path": f"{uid}.flac"},
             "text": texts[uid]}
            for i, (uid, n) in enumerate([("hello", 16_000), ("she", 6400), ("long", 9600)])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    wh = tmp_path / "wh"
    extract(ExtractConfig(run="r", model=str(ctc_model), format="hf", corpus=str(tmp_path / "corpus.parquet"),
                          warehouse=str(wh), layers="0", progress=False, device="cpu"))
    counts = labels("r", str(ctc_model), warehouse=str(wh), source="forced", device="cpu")
    # "long": 83 tokens and 8 blanks between double letters (SELLS, SHELLS) in 29 frames: no rows, a reason
    assert set(counts.unlabelled) == {"long"}
    assert "'long': 83 target tokens need at least 91 frames" in counts.unlabelled["long"]
    assert "have 29" in counts.unlabelled["long"]
    assert counts.dropped == {",": 1, "!": 1, ".": 1}
    commit = list(Warehouse(wh).commit_records("r", "labels.ctc_forced").values())
    assert "long" in commit[-1]["unlabelled"]
    chars, words = segments_of(wh, "ctc_char"), segments_of(wh, "ctc_word")
    assert set(chars) == set(words) == {"hello", "she"}
    assert "".join(s[1] for s in chars["hello"]) == "HELLO|WORLD" and "".join(s[1] for s in chars["she"]) == "SHE"
    assert [s[1] for s in words["hello"]] == ["HELLO", "WORLD"] and [s[1] for s in words["she"]] == ["SHE"]
    durations = dict(Warehouse(wh).connect().sql("select utterance_id, duration_s from utterances").fetchall())
    for tier in (chars, words):
        for uid, segs in tier.items():
            assert [s[0] for s in segs] == list(range(len(segs)))
            assert all(s[4] == "ctc_forced" and 0 <= s[2] < s[3] <= durations[uid] for s in segs)
            assert all(a[3] <= b[2] for a, b in zip(segs, segs[1:]))  # ordered, non-overlapping
    # the char intervals are the Viterbi path of the model's own log-probs
    wave, _ = sf.read(io.BytesIO(rows[0]["audio"]["bytes"]), dtype="float32")
    lp = ctc.log_softmax(reference_logits(ctc_model, wave))
    ids = [VOCAB.index(c) for c in "HELLO|WORLD"]
    ref = ctc.char_segments(ctc.forced_align(lp, ids), list("HELLO|WORLD"), load_ctc_model(ctc_model, "cpu").geometry)
    assert [(s.start_s, s.end_s) for s in ref] == [(s[2], s[3]) for s in chars["hello"]]
    assert set(run_checks(wh).values()) == {0}


def test_models_that_cannot_label_the_run_are_refused(tmp_path, timit_run, ctc_model):
    wh, _ = timit_run
    other = save_tiny_ctc(tmp_path / "hop160", conv_stride=(5, 2, 2, 2, 2, 2, 1))
    with pytest.raises(ValueError, match=r"frame geometry .*'hop_samples': 160.* differs from run 'r'"):
        labels("r", str(other), warehouse=str(wh), device="cpu")
    headless = save_tiny_ctc(tmp_path / "pretrained", head="Wav2Vec2Model")
    with pytest.raises(ValueError, match="no CTC head"):
        load_ctc_model(headless, "cpu")
    with pytest.raises(ValueError, match="no facts"):
        labels("nope", str(ctc_model), warehouse=str(wh), device="cpu")
    with pytest.raises(ValueError, match="--source"):
        labels("r", str(ctc_model), warehouse=str(wh), source="beam")


def test_ctc_checkpoint_missing_encoder_weights_is_refused(tmp_path):
    """A CTC checkpoint without its transformer layers would label with random layers: refused."""
    from safetensors.torch import load_file, save_file

    from pipeline.stages.labels import load_ctc_model

    folder = save_tiny_ctc(tmp_path / "ctc")
    path = folder / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if ".encoder.layers." not in k}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"encoder"):
        load_ctc_model(str(folder), device="cpu")


def test_labels_refuses_a_corpus_changed_since_the_run(tmp_path, ctc_model):
    """labels reopens the run's corpus: a corpus whose files changed would attach labels to other audio."""
    from pipeline.stages.ingest import CorpusChanged

    corpus = make_timit(tmp_path / "timit")
    wh = tmp_path / "wh"
    extract(ExtractConfig(run="r", model=str(ctc_model), format="timit", corpus=str(corpus), warehouse=str(wh),
                          layers="2", shard_size=2, progress=False, device="cpu"))
    wav = next(corpus.rglob("SA1.WAV"))
    wav.write_bytes(wav.read_bytes())  # rewritten in place: same bytes
    os.utime(wav, (1, 1))  # and another mtime
    with pytest.raises(CorpusChanged, match="changed since the run was made"):
        labels("r", str(ctc_model), str(wh), device="cpu")
    assert not Warehouse(wh).commits("r", "labels.ctc_greedy")
