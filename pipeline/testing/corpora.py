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


# ---------------------------------------------------------------- replicas of real corpora' layouts (recipes)

FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"  # the commit sha of every local Hub cache replica


def hub_cache_folder(hf_home: Path, repo_id: str, kind: str = "datasets") -> Path:
    """The snapshot folder of `repo_id` in the local Hub cache under `hf_home` (what `snapshot_download`
    leaves: `$HF_HOME/hub/{kind}--org--name/snapshots/<rev>/`, `refs/main` naming the revision); created."""
    repo = hf_home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_REVISION)
    snapshot = repo / "snapshots" / FAKE_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _hf_table(rows: list[dict], extra: dict) -> "pa.Table":
    """Rows as `datasets` writes them: the Audio feature recorded in the schema's metadata."""
    import datasets

    features = datasets.Features({"audio": datasets.Audio(sampling_rate=RATE), **extra})
    return pa.Table.from_pylist(rows, schema=features.arrow_schema)


# An MFA alignment per utterance: (word, [(phone, n_frames of 10 ms)]); None = silence between words.
MFA_WORDS = [None, ("HELLO", [("HH", 6), ("AH0", 5), ("L", 6), ("OW1", 9)]), None,
             ("WORLD", [("W", 5), ("ER1", 8), ("L", 5), ("D", 6)]), ("<unk>", [("spn", 10)])]


def mfa_textgrid(duration_s: float, words=MFA_WORDS, speaker: str | None = None) -> str:
    """A TextGrid as the Montreal Forced Aligner writes it: tiers `words` and `phones` (prefixed
    `<speaker> - ` with `speaker`), empty word labels for silence, `sil` and `sp` phones, an
    out-of-vocabulary word `<unk>` spoken as `spn`, ARPAbet with stress digits. The intervals tile
    `duration_s` (the last silence takes what is left)."""
    word_iv, phone_iv, t = [], [], 0.0
    for entry in words:
        if entry is None:
            word_iv.append((t, t + 0.08, ""))
            phone_iv.append((t, t + 0.08, "sil" if t == 0 else "sp"))
            t += 0.08
            continue
        word, phones = entry
        start = t
        for phone, n in phones:
            phone_iv.append((t, t + n / 100, phone))
            t += n / 100
        word_iv.append((start, t, word))
    if t > duration_s:
        raise ValueError(f"the alignment needs {t:.2f} s, the audio has {duration_s:.2f} s")
    word_iv.append((t, duration_s, ""))
    phone_iv.append((t, duration_s, "sil"))
    prefix = f"{speaker} - " if speaker else ""
    return _textgrid_text(duration_s, [(prefix + "words", word_iv), (prefix + "phones", phone_iv)])


def _textgrid_text(duration_s: float, tiers: list[tuple[str, list[tuple[float, float, str]]]]) -> str:
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration_s}",
           "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for i, (name, intervals) in enumerate(tiers, 1):
        out += [f"    item [{i}]:", '        class = "IntervalTier"', f'        name = "{name}"', "        xmin = 0",
                f"        xmax = {duration_s}", f"        intervals: size = {len(intervals)}"]
        for j, (s, e, label) in enumerate(intervals, 1):
            out += [f"        intervals [{j}]:", f"            xmin = {s:.4f}", f"            xmax = {e:.4f}",
                    f'            text = "{label}"']
    return "\n".join(out) + "\n"


LIBRISPEECH_UTTERANCES = {  # split of the `all` config → (speaker, chapter, utterance) of each row
    "validation.clean": [(84, 121123, 0), (84, 121123, 1), (174, 50561, 0)],
    "test.clean": [(1089, 134686, 0), (1089, 134686, 1)],
}


def make_librispeech_hub(hf_home: Path, textgrids: Path | None = None, missing: int = 1) -> Path:
    """openslr/librispeech_asr as its Hub repository holds it, in a local Hub cache under `hf_home`:
    Parquet under `all/<split>/0000.parquet` and `clean/<split>/…`, a README whose YAML lists the
    configs (all, clean, other; none the default), columns file, audio, text, speaker_id, chapter_id,
    id. With `textgrids`, MFA's output for it there (`<speaker>/<chapter>/<id>.TextGrid`), leaving out
    the last `missing` utterance(s) of validation.clean. Returns the snapshot folder."""
    import datasets

    snapshot = hub_cache_folder(hf_home, "openslr/librispeech_asr")
    extra = {"file": datasets.Value("string"), "text": datasets.Value("string"),
             "speaker_id": datasets.Value("int64"), "chapter_id": datasets.Value("int64"),
             "id": datasets.Value("string")}
    configs = {"all": {}, "clean": {}, "other": {}}
    for split, utterances in LIBRISPEECH_UTTERANCES.items():
        rows = []
        for n, (speaker, chapter, k) in enumerate(utterances):
            uid = f"{speaker}-{chapter}-{k:04d}"
            n_samples = 24000 + 1600 * n
            flac = audio_bytes(tone(n_samples, 180 + 30 * n), fmt="FLAC")
            rows.append({"file": f"{uid}.flac", "text": "HELLO WORLD", "audio": {"bytes": flac, "path": f"{uid}.flac"},
                         "speaker_id": speaker, "chapter_id": chapter, "id": uid})
            if textgrids is not None and not (split == "validation.clean" and n >= len(utterances) - missing):
                grid = textgrids / str(speaker) / str(chapter) / f"{uid}.TextGrid"
                grid.parent.mkdir(parents=True, exist_ok=True)
                grid.write_text(mfa_textgrid(n_samples / RATE))
        kind, _, clean_split = split.partition(".")
        for config, name in (("all", split), ("clean", f"{kind}")):
            path = snapshot / config / name / "0000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_hf_table(rows, extra), path, row_group_size=2)
            configs[config][name] = f"{config}/{name}/*.parquet"
        configs["other"].setdefault("validation", "other/validation/*.parquet")
    other = snapshot / "other" / "validation" / "0000.parquet"
    other.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_hf_table([], extra), other)
    yaml = ["---", "configs:"]
    for config, splits in configs.items():
        yaml += [f"- config_name: {config}", "  data_files:"]
        yaml += [f"  - split: {name}\n    path: {pattern}" for name, pattern in splits.items()]
    yaml += ["---", "", "A replica of openslr/librispeech_asr's layout."]
    (snapshot / "README.md").write_text("\n".join(yaml) + "\n")
    return snapshot


def make_timit_ldc(root: Path, lower: bool = False) -> Path:
    """TIMIT as the LDC release ships it (`TRAIN/DR1/FCJF0/SA1.WAV` NIST SPHERE, `.PHN`, `.WRD`, `.TXT`),
    or with `lower` as Kaggle copies do (`train/dr1/fcjf0/sa1.wav`, RIFF)."""
    make_timit(root)
    write_timit_utt(root, "TEST/DR2/MABC0/SI1620", 11200)
    if lower:
        for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            if path.name != path.name.lower():
                target = path.with_name(path.name.lower())
                if path.suffix.upper() == ".WAV":
                    data, rate = sf.read(path)
                    path.unlink()
                    sf.write(target, data, rate, format="WAV", subtype="PCM_16")
                else:
                    path.rename(target)
    return root


L2ARCTIC_SPEAKERS = {"ABA": "Arabic", "BWC": "Mandarin", "HJK": "Korean"}


def make_l2arctic(root: Path) -> Path:
    """L2-ARCTIC's layout: per speaker `wav/arctic_a000N.wav` (44.1 kHz), `transcript/…txt`, forced
    alignments in `textgrid/` (one speaker has only the hand-annotated `annotation/`), the same stems
    under every speaker; and `speakers_l1.csv` (speaker, l1) beside them, the README's speaker table."""
    for i, speaker in enumerate(L2ARCTIC_SPEAKERS):
        for k in (1, 2):
            stem, n = f"arctic_a000{k}", 44100 + 4410 * k
            (root / speaker / "wav").mkdir(parents=True, exist_ok=True)
            sf.write(root / speaker / "wav" / f"{stem}.wav", tone(n, 200 + 40 * i, rate=44100), 44100)
            grids = root / speaker / ("annotation" if speaker == "HJK" else "textgrid")
            grids.mkdir(parents=True, exist_ok=True)
            (grids / f"{stem}.TextGrid").write_text(mfa_textgrid(n / 44100, MFA_WORDS[:4]))
            (root / speaker / "transcript").mkdir(parents=True, exist_ok=True)
            (root / speaker / "transcript" / f"{stem}.txt").write_text("hello world\n")
    table = "".join(f"{speaker},{l1}\n" for speaker, l1 in L2ARCTIC_SPEAKERS.items())
    (root / "speakers_l1.csv").write_text("speaker,l1\n" + table)
    return root


def make_vctk(root: Path, alignments: Path) -> Path:
    """VCTK's layout (`wav48/p225/p225_001.wav` at 48 kHz, `txt/`, `speaker-info.txt` with IDs as the
    0.80 release writes them, `225`, and multi-word regions) and MFA TextGrids for it in `alignments`
    (`p225/p225_001.TextGrid`)."""
    info = ["ID  AGE  GENDER  ACCENTS  REGION", "225  23  F    English    Southern  England",
            "226  22  M    English    Surrey", "227  38  M    English    Cumbria", "376  22  M    Indian"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "speaker-info.txt").write_text("\n".join(info) + "\n")
    for i, speaker in enumerate(("p225", "p226")):
        for k in (1, 2):
            stem, n = f"{speaker}_00{k}", 96000 + 4800 * k
            for folder, name in (("wav48", f"{stem}.wav"), ("txt", f"{stem}.txt")):
                (root / folder / speaker).mkdir(parents=True, exist_ok=True)
            sf.write(root / "wav48" / speaker / f"{stem}.wav", tone(n, 160 + 50 * i, rate=48000), 48000)
            (root / "txt" / speaker / f"{stem}.txt").write_text("Hello world.\n")
            (alignments / speaker).mkdir(parents=True, exist_ok=True)
            (alignments / speaker / f"{stem}.TextGrid").write_text(mfa_textgrid(n / 48000, speaker=speaker))
    return root


def make_common_voice(root: Path, alignments: Path) -> Path:
    """A Common Voice split exported to Parquet (`train/0000.parquet`: client_id, path, audio, sentence,
    up_votes, down_votes, age, gender, accents, locale, segment) and MFA TextGrids named by clip."""
    import datasets

    rows = []
    for i in range(3):
        clip, n = f"common_voice_en_{1000 + i}.mp3", 24000 + 3200 * i
        rows.append({"client_id": f"c{i % 2:040d}", "path": clip, "sentence": "Hello world.",
                     "audio": {"bytes": audio_bytes(tone(n, 210 + 15 * i), fmt="FLAC"), "path": clip},
                     "up_votes": 2, "down_votes": 0, "age": ["twenties", "fifties", ""][i],
                     "gender": ["female", "male", ""][i],
                     "accents": ["Scottish English", "", "India and South Asia"][i],
                     "locale": "en", "segment": ""})
        alignments.mkdir(parents=True, exist_ok=True)
        (alignments / f"{clip[:-4]}.TextGrid").write_text(mfa_textgrid(n / RATE))
    extra = {name: datasets.Value("int64" if name.endswith("votes") else "string")
             for name in ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents",
                          "locale", "segment")}
    (root / "train").mkdir(parents=True, exist_ok=True)
    pq.write_table(_hf_table(rows, extra), root / "train" / "0000.parquet")
    return root
