"""The embedded corpus as shipped: schema, alignment invariants, audio, and real phonetic structure.

Reads pipeline/corpus/embedded/data/*.parquet with pyarrow; espeak-ng is needed only by the one test that
regenerates utterances, which is skipped where libespeak-ng.so.1 is absent.
"""

from __future__ import annotations

import ctypes.util
import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.corpus.embedded import SPLITS, build, data_files
from pipeline.corpus.embedded.build import (
    EVENT_END, EVENT_PHONEME, EVENT_WORD, SCHEMA, SPEAKERS, Interval, Synthesis, UtterancePlan,
)
from pipeline.corpus.embedded.sentences import generate_sentences, words_of

MAX_DATA_BYTES = 8_000_000  # the whole data folder; 7.55 MB as built
FRAME_HOP_SAMPLES, FRAME_WINDOW_SAMPLES = 320, 400  # 20 ms hop, 25 ms window at 16 kHz


def _split_path(split: str):
    return build.DATA_DIR / f"{split}-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [row for split in SPLITS for row in pq.read_table(_split_path(split)).to_pylist()]


@pytest.fixture(scope="module")
def decoded(rows) -> dict[str, tuple[np.ndarray, int, object]]:
    """id → (int16 samples, sample rate, soundfile info) for every row."""
    out = {}
    for row in rows:
        data = row["audio"]["bytes"]
        samples, rate_hz = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
        out[row["id"]] = (samples, rate_hz, sf.info(io.BytesIO(data)))
    return out


def test_files_and_size():
    files = sorted(p.name for p in build.DATA_DIR.iterdir())
    assert files == ["README.md", "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    total_bytes = sum(p.stat().st_size for p in build.DATA_DIR.iterdir())
    assert total_bytes <= MAX_DATA_BYTES, f"data folder is {total_bytes} bytes, budget {MAX_DATA_BYTES}"


def test_schema_and_build_facts():
    for split in SPLITS:
        schema = pq.read_schema(_split_path(split))
        assert schema.remove_metadata() == SCHEMA.remove_metadata()
        facts = json.loads(schema.metadata[b"pipeline.embedded"])
        assert facts["n_utterances"] == build.DEFAULT_N_UTTERANCES and facts["seed"] == build.DEFAULT_SEED


def test_ids_unique_and_named_for_speaker(rows):
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == build.DEFAULT_N_UTTERANCES
    for row in rows:
        assert re.fullmatch(r"[a-z0-9-]+\+[mf]\d/\d{4}", row["id"]), row["id"]
        assert row["id"].split("/")[0] == row["speaker_id"]
        assert row["audio"]["path"] == f"{row['id']}.flac"


def test_rows_sorted_within_files():
    for split in SPLITS:
        ids = pq.read_table(_split_path(split), columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)


def test_split_by_speaker_and_metadata(rows):
    speakers = {s.speaker_id: s for s in SPEAKERS}
    for row in rows:
        speaker = speakers[row["speaker_id"]]
        assert (row["split"], row["gender"], row["dialect"]) == (speaker.split, speaker.gender, speaker.voice)
    test_speakers = {row["speaker_id"] for row in rows if row["split"] == "test"}
    train_speakers = {row["speaker_id"] for row in rows if row["split"] == "train"}
    assert len(test_speakers) == 2 and not test_speakers & train_speakers
    assert {row["gender"] for row in rows if row["split"] == "test"} == {"male", "female"}


def test_audio_is_16k_mono_pcm16_of_stated_length(rows, decoded):
    for row in rows:
        samples, rate_hz, info = decoded[row["id"]]
        assert rate_hz == 16_000 and samples.shape[1] == 1, row["id"]
        assert info.format == "FLAC" and info.subtype == "PCM_16", row["id"]
        assert len(samples) == row["phonetic_detail"]["stop"][-1], row["id"]
        assert 1.2 <= len(samples) / rate_hz <= 3.2, f"{row['id']}: {len(samples) / rate_hz:.2f} s"
        assert np.abs(samples).max() > 1_000, f"{row['id']} is (nearly) silent"


def test_phones_tile_the_audio(rows, decoded):
    for row in rows:
        detail = row["phonetic_detail"]
        starts, stops, labels = detail["start"], detail["stop"], detail["utterance"]
        assert len(starts) == len(stops) == len(labels) >= 3, row["id"]
        assert starts[0] == 0 and stops[-1] == len(decoded[row["id"]][0]), row["id"]
        assert starts[1:] == stops[:-1], f"{row['id']}: gap or overlap between phones"
        assert all(stop > start for start, stop in zip(starts, stops)), f"{row['id']}: empty phone"
        assert labels[0] == labels[-1] == "sil", f"{row['id']}: no leading/trailing silence"
        assert all(a != "sil" or b != "sil" for a, b in zip(labels, labels[1:])), f"{row['id']}: adjacent sil"


def test_words_inside_audio_on_phone_boundaries(rows):
    for row in rows:
        phones, words = row["phonetic_detail"], row["word_detail"]
        starts, stops = set(phones["start"]), set(phones["stop"])
        assert len(words["start"]) == len(words["stop"]) == len(words["utterance"]) >= 1, row["id"]
        for start, stop, label in zip(words["start"], words["stop"], words["utterance"]):
            assert 0 < start < stop < phones["stop"][-1], f"{row['id']}: {label!r} outside the audio"
            assert start in starts and stop in stops, f"{row['id']}: {label!r} not on phone boundaries"
            inside = [p for p, s in zip(phones["utterance"], phones["start"]) if start <= s < stop]
            assert "sil" not in inside, f"{row['id']}: {label!r} spans a silence"
        assert all(b >= a for a, b in zip(words["stop"], words["start"][1:])), f"{row['id']}: words overlap"
        assert " ".join(words["utterance"]) == " ".join(words_of(row["text"])), row["id"]


def test_every_phone_label_has_a_class(rows):
    classes = json.loads(build.PHONE_CLASSES_PATH.read_text())["classes"]
    allowed = {"silence", "vowel", "diphthong", "stop", "affricate", "fricative", "nasal", "approximant"}
    assert set(classes.values()) <= allowed
    labels = {label for row in rows for label in row["phonetic_detail"]["utterance"]}
    assert labels - set(classes) == set()
    assert len(labels) >= 50, f"only {len(labels)} phone labels"


def _mel_filterbank(n_mels: int = 40, n_fft: int = 512, sample_rate_hz: int = 16_000) -> np.ndarray:
    def mel(f_hz):
        return 2595 * np.log10(1 + f_hz / 700)

    edges_hz = 700 * (10 ** (np.linspace(0, mel(sample_rate_hz / 2), n_mels + 2) / 2595) - 1)
    bins_hz = np.fft.rfftfreq(n_fft, 1 / sample_rate_hz)
    bank = np.zeros((n_mels, len(bins_hz)))
    for m in range(n_mels):
        low, centre, high = edges_hz[m:m + 3]
        rising, falling = (bins_hz - low) / (centre - low), (high - bins_hz) / (high - centre)
        bank[m] = np.clip(np.minimum(rising, falling), 0, None)
    return bank


def _frames_and_labels(rows, decoded, shift_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Standardised log-mel frames (wav2vec2 geometry: frame i covers [320 i, 320 i + 400)) and
    the phone holding each frame's centre (320 i + 200) / 16000 s, optionally `shift_s` earlier."""
    bank, window = _mel_filterbank(), np.hanning(FRAME_WINDOW_SAMPLES)
    features, labels = [], []
    for row in rows:
        samples = decoded[row["id"]][0][:, 0].astype(np.float64) / 32768
        n_frames = (len(samples) - FRAME_WINDOW_SAMPLES) // FRAME_HOP_SAMPLES + 1
        first = FRAME_HOP_SAMPLES * np.arange(n_frames)
        frames = samples[first[:, None] + np.arange(FRAME_WINDOW_SAMPLES)] * window
        power = np.abs(np.fft.rfft(frames, 512)) ** 2
        features.append(np.log(power @ bank.T + 1e-8))
        centres = np.clip(first + FRAME_WINDOW_SAMPLES // 2 - round(shift_s * 16_000), 0, None)
        detail = row["phonetic_detail"]
        holder = np.searchsorted(np.array(detail["start"]), centres, side="right") - 1
        labels.append(np.array(detail["utterance"])[holder])
    x = np.concatenate(features)
    return (x - x.mean(0)) / x.std(0), np.concatenate(labels)


def _phone_cluster_ami(rows, decoded) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    x, labels = _frames_and_labels(rows, decoded)
    _, labels_late = _frames_and_labels(rows, decoded, shift_s=0.1)
    clusters = KMeans(len(set(labels)), n_init=1, random_state=0).fit_predict(x)
    speech = labels != "sil"
    return {
        "aligned": adjusted_mutual_info_score(labels, clusters),
        "shuffled": adjusted_mutual_info_score(np.random.default_rng(0).permutation(labels), clusters),
        "shifted_100ms": adjusted_mutual_info_score(labels_late, clusters),
        "speech_only": adjusted_mutual_info_score(labels[speech], clusters[speech]),
    }


def _assert_phonetic_structure(ami: dict[str, float]) -> None:
    # measured (k-means, k = number of phones, seed 0): test split aligned 0.55, shuffled 0.001,
    # labels 100 ms late 0.21, speech frames only 0.53; all 240 utterances 0.48 / 0.000 / 0.16 / 0.45
    assert ami["aligned"] > 0.35, ami
    assert abs(ami["shuffled"]) < 0.02, ami
    assert ami["aligned"] - ami["shifted_100ms"] > 0.15, ami
    assert ami["speech_only"] > 0.3, ami


def test_log_mel_clusters_follow_phones_test_split(rows, decoded):
    """~5 s: 60 utterances, ~6,400 frames."""
    _assert_phonetic_structure(_phone_cluster_ami([r for r in rows if r["split"] == "test"], decoded))


@pytest.mark.slow
def test_log_mel_clusters_follow_phones_all(rows, decoded):
    """~15 s: 240 utterances, ~25,000 frames."""
    _assert_phonetic_structure(_phone_cluster_ami(rows, decoded))


def test_streams_with_datasets():
    datasets = pytest.importorskip("datasets")
    stream = datasets.load_dataset("parquet", data_files=data_files(), streaming=True)["test"]
    example = next(iter(stream.cast_column("audio", datasets.Audio(decode=False))))
    assert example["audio"]["bytes"][:4] == b"fLaC" and example["audio"]["path"].endswith(".flac")
    assert set(example["phonetic_detail"]) == {"start", "stop", "utterance"}


# ---------------------------------------------------------------- generator logic, no espeak


def test_sentences_are_deterministic_and_distinct():
    sentences = generate_sentences(240, seed=7)
    assert sentences == generate_sentences(240, seed=7) != generate_sentences(240, seed=8)
    assert len(set(sentences)) == 240
    assert all(5 <= len(words_of(s)) <= 7 for s in sentences)
    assert not any(re.search(r"\b[Aa] [aeiouAEIOU]", s) for s in sentences)


def _fake_synthesis() -> tuple[UtterancePlan, Synthesis]:
    """'Put it on the table.' as espeak-ng reports it: "on the" under one WORD event, and a final
    /l/ with zero samples. Samples at 22,050 Hz, before the 2,205-sample leading pad."""
    text = "Put it on the table."
    events = [(EVENT_WORD, 1, 0, "")]
    events += [(EVENT_PHONEME, 1, s, p) for s, p in ((100, "p"), (300, "U"), (500, "t"))]
    events += [(EVENT_WORD, 5, 600, ""), (EVENT_PHONEME, 5, 600, "I"), (EVENT_PHONEME, 5, 800, "t")]
    events += [(EVENT_WORD, 8, 1000, "")]
    events += [(EVENT_PHONEME, 8, s, p) for s, p in ((1000, "0"), (1200, "n"), (1300, "D"), (1400, "@2"))]
    events += [(EVENT_WORD, 15, 1500, "")]
    events += [(EVENT_PHONEME, 15, s, p)
               for s, p in ((1600, "t"), (1800, "'eI"), (2200, "b"), (2400, "@L"), (2700, "l"))]
    events += [(EVENT_PHONEME, 21, 2700, "_:"), (EVENT_PHONEME, 21, 3000, "_"), (EVENT_END, 20, 3000, "")]
    plan = UtterancePlan("en-us+m1/9999", text, SPEAKERS[0], 175, 50)
    return plan, Synthesis(np.zeros(3000, np.int16), tuple(events), "test")


def test_align_merges_words_and_drops_empty_phones():
    plan, synthesis = _fake_synthesis()
    alignment = build.align(plan, synthesis)
    pad = build.LEADING_SILENCE_SAMPLES
    assert [w.label for w in alignment.words] == ["put", "it", "on the", "table"]
    assert alignment.words[2] == Interval(pad + 1000, pad + 1600, "on the")  # to the next phone
    assert (alignment.n_merged_words, alignment.n_dropped_phones) == (1, 1)
    assert alignment.phones[0] == Interval(0, pad + 100, "sil")
    assert alignment.phones[-1] == Interval(pad + 2700, pad + 3000, "sil")
    assert [p.label for p in alignment.phones if p.label != "sil"] == \
        ["p", "U", "t", "I", "t", "0", "n", "D", "@2", "t", "eI", "b", "@L"]
    utterance = build.finish(plan, synthesis)
    assert utterance.phones[-1].stop == len(utterance.samples) == round((pad + 3000) * 16_000 / 22_050)
    assert utterance.words[0].start == round((pad + 100) * 16_000 / 22_050)


def test_align_rejects_a_word_event_inside_a_word():
    plan, synthesis = _fake_synthesis()
    events = list(synthesis.events)
    events[4] = (EVENT_WORD, 6, 600, "")  # character 6 is the 't' of "it"
    with pytest.raises(ValueError, match="starts no word"):
        build.align(plan, Synthesis(synthesis.samples, tuple(events), "test"))


def test_check_alignment_names_the_gap():
    phones = [Interval(0, 10, "sil"), Interval(12, 20, "a")]
    with pytest.raises(ValueError, match=r"x/0001: phone 'a' starts at 12, expected 10"):
        build.check_alignment("x/0001", phones, [], 20)


# ---------------------------------------------------------------- regeneration, needs espeak-ng


@pytest.mark.skipif(ctypes.util.find_library("espeak-ng") is None, reason="libespeak-ng.so.1 not installed")
def test_regenerating_three_utterances_matches_shipped(rows):
    shipped = {row["id"]: row for row in rows}
    plans = build.plan_utterances(build.DEFAULT_N_UTTERANCES, build.DEFAULT_SEED)
    merged = next(p for p in plans
                  if any(" " in word for word in shipped[p.utterance_id]["word_detail"]["utterance"]))
    chosen = [plans[0], plans[len(SPEAKERS) - 1], merged]  # a train speaker, a test speaker, "on the"-like
    syntheses = build.synthesize_in_fresh_processes(chosen, n_workers=2)
    for plan, synthesis in zip(chosen, syntheses):
        regenerated, original = build.to_row(build.finish(plan, synthesis)), shipped[plan.utterance_id]
        for column in ("text", "speaker_id", "gender", "dialect", "split", "phonetic_detail", "word_detail"):
            assert regenerated[column] == original[column], f"{plan.utterance_id}: {column} differs"
        new_samples = sf.read(io.BytesIO(regenerated["audio"]["bytes"]), dtype="int16")[0]
        old_samples = sf.read(io.BytesIO(original["audio"]["bytes"]), dtype="int16")[0]
        assert np.array_equal(new_samples, old_samples), f"{plan.utterance_id}: audio differs"
