"""What the benchmarks run on: Hub-style Parquet corpora (the embedded one, or generated
speech-like audio with exact phone and word intervals), frame-like vectors for k-means and the
reductions, and a wav2vec2-base-size model with random weights."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RATE_HZ = 16_000
# wav2vec2-base (facebook/wav2vec2-base): conv 512 x 7, group norm, 768-d, 12 layers; ~95M parameters
BASE_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   conv_dim=[512] * 7, feat_extract_norm="group", do_stable_layer_norm=False)


# ---------------------------------------------------------------- corpora


def embedded_rows(n: int) -> pa.Table:
    """The first `n` rows of the embedded corpus (train split first), cycled when n is larger."""
    from pipeline.corpus.sources import EMBEDDED_DATA

    files = sorted(EMBEDDED_DATA.glob("*.parquet"), key=lambda p: (not p.name.startswith("train"), p.name))
    table = pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])
    return tile(table, -(-n // table.num_rows)).slice(0, n)


def tile(table: pa.Table, times: int) -> pa.Table:
    """`table` repeated `times` over; copy c > 0 gets ids `<id>~c<c>` (the stream must not repeat ids)."""
    if times == 1:
        return table
    copies = []
    for c in range(times):
        ids = table["id"] if c == 0 else pa.array([f"{i}~c{c}" for i in table["id"].to_pylist()])
        copies.append(table.set_column(table.schema.get_field_index("id"), "id", ids))
    return pa.concat_tables(copies)


def corpus_audio_s(path: Path) -> float:
    import soundfile as sf

    audio = pq.read_table(path, columns=["audio"])["audio"].to_pylist()
    return sum(sf.info(io.BytesIO(a["bytes"])).duration for a in audio)


# label: (kind, formant or noise band centres Hz). A small, TIMIT-like inventory.
SYNTH_PHONES = {"aa": ("vowel", (730, 1090, 2440)), "iy": ("vowel", (270, 2290, 3010)),
                "uw": ("vowel", (300, 870, 2240)), "eh": ("vowel", (530, 1840, 2480)),
                "ah": ("vowel", (520, 1190, 2390)), "m": ("nasal", (250, 1000, 2200)),
                "n": ("nasal", (250, 1500, 2500)), "s": ("fricative", (5500,)), "sh": ("fricative", (3000,)),
                "f": ("fricative", (4000,)), "t": ("stop", (4000,)), "k": ("stop", (2000,))}


def synthetic_rows(n: int, seed: int = 0) -> pa.Table:
    """Speech-like utterances of 2-6 s: harmonic vowels and nasals with formants and a pitch
    contour, band-noise fricatives, stop bursts, pauses; exact phone and word intervals in samples."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        speaker = i % 8
        wave, phones, words = _synthetic_utterance(rng, rng.uniform(2.0, 6.0), 90 + 15 * speaker)
        rows.append({
            "id": f"synth{speaker}/{i:05d}", "audio": {"bytes": _flac(wave), "path": f"{i:05d}.flac"},
            "text": " ".join(w[2] for w in words), "speaker_id": f"synth{speaker}",
            "phonetic_detail": {k: list(v) for k, v in zip(("start", "stop", "utterance"), zip(*phones))},
            "word_detail": {k: list(v) for k, v in zip(("start", "stop", "utterance"), zip(*words))},
        })
    return pa.Table.from_pylist(rows)


def _synthetic_utterance(rng, duration_s: float, f0_hz: float):
    labels = list(SYNTH_PHONES)
    pieces, phones, words = [_silence(rng, int(0.15 * RATE_HZ))], [], []
    phones.append((0, len(pieces[0]), "sil"))
    pos = len(pieces[0])
    while pos < (duration_s - 0.2) * RATE_HZ:
        start = pos
        for _ in range(rng.integers(2, 6)):
            label = labels[rng.integers(len(labels))]
            n = int(rng.uniform(0.05, 0.18) * RATE_HZ)
            pieces.append(_phone(rng, label, n, f0_hz * rng.uniform(0.85, 1.2)))
            phones.append((pos, pos + n, label))
            pos += n
        words.append((start, pos, f"w{rng.integers(500)}"))
        if rng.random() < 0.3:
            n = int(rng.uniform(0.05, 0.2) * RATE_HZ)
            pieces.append(_silence(rng, n))
            phones.append((pos, pos + n, "sil"))
            pos += n
    pieces.append(_silence(rng, int(0.15 * RATE_HZ)))
    phones.append((pos, pos + len(pieces[-1]), "sil"))
    wave = np.concatenate(pieces)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32), phones, words


def _phone(rng, label: str, n: int, f0_hz: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    kind, bands = SYNTH_PHONES[label]
    t = np.arange(n) / RATE_HZ
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * RATE_HZ))
    if kind in ("vowel", "nasal"):
        phase = 2 * np.pi * np.cumsum(f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / RATE_HZ
        harmonics = np.arange(1, int(4000 // f0_hz) + 1)
        gain = sum(np.exp(-((harmonics * f0_hz - f) / 120.0) ** 2) for f in bands) + 0.02
        wave = (gain[:, None] * np.sin(harmonics[:, None] * phase[None, :])).sum(0)
        wave *= 0.4 if kind == "nasal" else 1.0
    else:
        sos = butter(2, [bands[0] * 0.7, min(bands[0] * 1.3, 7900)], btype="band", fs=RATE_HZ, output="sos")
        wave = sosfilt(sos, rng.standard_normal(n)) * 3.0
        if kind == "stop":  # closure, then a 15 ms burst
            wave[: max(0, n - int(0.015 * RATE_HZ))] = 0.0
    return wave * ramp + 0.003 * rng.standard_normal(n)


def _silence(rng, n: int) -> np.ndarray:
    return 0.003 * rng.standard_normal(n)


def _flac(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, RATE_HZ, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------- a base-size model


def build_base_model(folder: Path) -> None:
    """wav2vec2-base geometry with random weights (torch seed 0), saved like a hub checkpoint."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Wav2Vec2Model(Wav2Vec2Config(**BASE_CONFIG))
    model.save_pretrained(tmp, safe_serialization=True)
    # facebook/wav2vec2-base's preprocessor_config: normalised input
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp)
    os.replace(tmp, folder)


# ---------------------------------------------------------------- frame-like vectors


def mixture(n: int, d: int, seed: int = 0, components: int = 400, rank: int = 64) -> np.ndarray:
    """Frame-like vectors: a Gaussian mixture of `components` uneven clusters (Zipf-like weights, like
    phone frequencies; per-cluster spread) in a `rank`-dim subspace, plus isotropic noise in all d."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, components + 1) ** 0.8
    labels = rng.choice(components, size=n, p=weights / weights.sum())
    centres = rng.standard_normal((components, rank), dtype=np.float32) * 2.0
    spread = rng.uniform(0.5, 1.5, components).astype(np.float32)
    z = centres[labels] + spread[labels, None] * rng.standard_normal((n, rank), dtype=np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)
    x = z @ basis
    x += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return x
