"""Tiny corpora in every layout `ingest` reads, good and bad (lhotse's `testing/dummies.py`): TIMIT
(NIST SPHERE + .PHN/.WRD/.TXT), LibriSpeech-style folders with MFA TextGrids, and a Hugging Face Parquet
shard. Every builder writes under the folder it is given and returns it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

RATE = 16_000


def tone(n_samples: int, freq_hz: float = 220.0, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A float32 sine at 0.3 amplitude plus faint seeded noise; (n_samples,) or (n_samples, channels)."""
    t = np.arange(n_samples) / rate
    rng = np.random.default_rng(seed)
    wave = 0.3 * np.sin(2 * np.pi * freq_hz * t) + 0.01 * rng.standard_normal(n_samples)
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def audio_bytes(wave: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """The encoded file (any soundfile format: WAV, FLAC, NIST) as bytes."""
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def phone_lines(bounds: list[int], labels: list[str]) -> str:
    """TIMIT .PHN/.WRD text: one `start end label` line (in samples) per pair of consecutive bounds."""
    return "".join(f"{a} {b} {lab}\n" for a, b, lab in zip(bounds, bounds[1:], labels))


def write_timit_utt(root: Path, uid: str, n_samples: int, phones: list[str] | None = None,
                    fmt: str = "NIST", with_phn: bool = True, phn_text: str | None = None,
                    wave: np.ndarray | None = None, rate: int = RATE) -> None:
    """One TIMIT utterance `root/uid.{WAV,PHN,WRD,TXT}`: a tone unless `wave` is given, phones spread
    evenly unless `phn_text` gives the .PHN verbatim; `with_phn=False` leaves the alignments out."""
    base = root / uid
    base.parent.mkdir(parents=True, exist_ok=True)
    wave = tone(n_samples, rate=rate) if wave is None else wave
    (base.with_suffix(".WAV")).write_bytes(audio_bytes(wave, rate, fmt))
    phones = phones or ["h#", "sh", "iy", "h#"]
    bounds = list(np.linspace(0, n_samples, len(phones) + 1).astype(int))
    if with_phn:
        base.with_suffix(".PHN").write_text(phn_text if phn_text is not None else phone_lines(bounds, phones))
        base.with_suffix(".WRD").write_text(phone_lines(bounds[1:3], ["she"]))
    base.with_suffix(".TXT").write_text(f"0 {n_samples} She.\n")


def make_timit(root: Path) -> Path:
    """Two speakers, two sentences each; 16 kHz NIST SPHERE like the LDC release."""
    for i, spk in enumerate(["FCJF0", "MDAB0"]):
        for j, sent in enumerate(["SA1", "SX139"]):
            write_timit_utt(root, f"TRAIN/DR1/{spk}/{sent}", 8000 + 1600 * (2 * i + j))
    return root


# The utterances make_bad_timit writes -> the quarantine reason ingest must give (None: repaired and kept).
BAD_TIMIT_CASES = {
    "TEST/DR2/FAAA0/STEREO": None,
    "TEST/DR2/FAAA0/RATE44": None,
    "TEST/DR2/FAAA0/UNSORTED": None,
    "TEST/DR2/FAAA0/OVERHANG": None,
    "TEST/DR2/FAAA0/CORRUPT": "decode_error",
    "TEST/DR2/FAAA0/TRUNC": "decode_error",
    "TEST/DR2/FAAA0/NOTAUDIO": "decode_error",
    "TEST/DR2/FAAA0/EMPTY": "empty_audio",
    "TEST/DR2/FAAA0/SHORT": "too_short",
    "TEST/DR2/FAAA0/NAN": "non_finite",
    "TEST/DR2/FAAA0/FARPAST": "alignment_out_of_range",
    "TEST/DR2/FAAA0/OVERLAP": "alignment_overlap",
    "TEST/DR2/FAAA0/NOLABEL": "alignment_empty_label",
    "TEST/DR2/FAAA0/NOPHN": "missing_alignment",
    "TEST/DR2/FAAA0/NOWAV": "missing_audio",
}


def make_bad_timit(root: Path) -> Path:
    """One utterance per bad input seen in the wild, in TIMIT layout under TEST/DR2/FAAA0 (BAD_TIMIT_CASES)."""
    n = 8000
    d = "TEST/DR2/FAAA0/"
    write_timit_utt(root, d + "STEREO", n, fmt="WAV", wave=tone(n, channels=2))
    write_timit_utt(root, d + "RATE44", 22050, fmt="WAV", wave=tone(22050, rate=44100), rate=44100)
    write_timit_utt(root, d + "UNSORTED", n, phn_text="4000 8000 iy\n0 4000 sh\n")
    write_timit_utt(root, d + "OVERHANG", n, phn_text="0 4000 sh\n4000 8100 iy\n")  # 6.25 ms past: clipped
    write_timit_utt(root, d + "CORRUPT", n, fmt="FLAC")
    flac = (root / (d + "CORRUPT.WAV"))
    flac.write_bytes(flac.read_bytes()[: len(flac.read_bytes()) // 2])
    write_timit_utt(root, d + "TRUNC", n, fmt="WAV")
    wav = root / (d + "TRUNC.WAV")
    wav.write_bytes(wav.read_bytes()[:5000])
    write_timit_utt(root, d + "NOTAUDIO", n)
    (root / (d + "NOTAUDIO.WAV")).write_text("this is not audio at all\n" * 20)
    write_timit_utt(root, d + "EMPTY", n, fmt="WAV", wave=np.zeros(0, np.float32), phn_text="")
    write_timit_utt(root, d + "SHORT", 399, fmt="WAV", phn_text="0 399 sh\n")
    nan = tone(n)
    nan[100] = np.nan
    write_timit_utt(root, d + "NAN", n, fmt="WAV", wave=nan)
    (root / (d + "NAN.WAV")).write_bytes(audio_bytes(nan, fmt="WAV", subtype="FLOAT"))
    write_timit_utt(root, d + "FARPAST", n, phn_text="0 4000 sh\n4000 8400 iy\n")  # 25 ms past
    write_timit_utt(root, d + "OVERLAP", n, phn_text="0 4500 sh\n4000 8000 iy\n")
    write_timit_utt(root, d + "NOLABEL", n, phn_text="0 4000 sh\n4000 8000\n")
    write_timit_utt(root, d + "NOPHN", n, with_phn=False)
    write_timit_utt(root, d + "NOWAV", n)
    os.remove(root / (d + "NOWAV.WAV"))
    return root


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = {end}
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = {end}
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = {mid}
            text = ""
        intervals [2]:
            xmin = {mid}
            xmax = {end}
            text = "hello"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = {end}
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = {mid}
            text = ""
        intervals [2]:
            xmin = {mid}
            xmax = {q3}
            text = "HH"
        intervals [3]:
            xmin = {q3}
            xmax = {end}
            text = "AH0"
"""


def make_textgrid_corpus(root: Path) -> Path:
    """LibriSpeech-style names in speaker folders, one flac and one wav, MFA TextGrids."""
    for stem, n, fmt in [("84-121123-0001", 12000, "FLAC"), ("84-121123-0002", 9600, "WAV")]:
        folder = root / "84"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".flac" if fmt == "FLAC" else ".wav"
        (folder / f"{stem}{suffix}").write_bytes(audio_bytes(tone(n), fmt=fmt))
        end = n / RATE
        (folder / f"{stem}.TextGrid").write_text(TEXTGRID.format(end=end, mid=end / 2, q3=end * 3 / 4))
    return root


def make_hf_parquet(path: Path, n: int = 5, with_detail: bool = True, ids: list[str] | None = None) -> Path:
    """A Hugging Face `datasets` Parquet shard (TIMIT-ASR columns): FLAC audio structs, text, speaker,
    gender, and with `with_detail` phonetic_detail / word_detail in samples."""
    rows = []
    for i in range(n):
        samples = 6400 + 800 * i
        row = {
            "id": ids[i] if ids else f"utt{i:03d}",
            "audio": {"bytes": audio_bytes(tone(samples, 200 + 20 * i), fmt="FLAC"), "path": f"utt{i}.flac"},
            "text": f"sentence {i}",
            "speaker_id": f"spk{i % 2}",
            "gender": "f" if i % 2 else "m",
        }
        if with_detail:
            row["phonetic_detail"] = {"start": [0, samples // 2], "stop": [samples // 2, samples], "utterance": ["a", "b"]}
            row["word_detail"] = {"start": [0], "stop": [samples], "utterance": ["ab"]}
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
