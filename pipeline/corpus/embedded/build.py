"""Generate the embedded corpus: espeak-ng speech with exact phone and word alignments.

    python -m pipeline.corpus.embedded.build [--out DIR] [--n-utterances N] [--seed S] [--workers W]

Stages: plan (sentence, speaker, rate, pitch per utterance) → synthesise each utterance in a
fresh process (espeak-ng C API through ctypes, 22,050 Hz, phoneme events) → align (events →
phone and word intervals) → resample to 16 kHz (soxr) → FLAC → check → one Parquet file per
split + README.md. Run time: about 2 min for 240 utterances on 2 cores.

At run time only `libespeak-ng.so.1` and its data are needed (Debian: libespeak-ng1,
espeak-ng-data). The event struct below mirrors espeak_EVENT in speak_lib.h (API revision 12).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import io
import json
import multiprocessing
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import soxr

from pipeline.corpus.embedded import DATA_DIR, PHONE_CLASSES_PATH
from pipeline.corpus.embedded.sentences import WORD_PATTERN, generate_sentences, words_of

SCHEMA_VERSION = 1
DEFAULT_SEED = 20240607
DEFAULT_N_UTTERANCES = 240

ESPEAK_LIBRARY = "libespeak-ng.so.1"
ESPEAK_SAMPLE_RATE_HZ = 22_050
SAMPLE_RATE_HZ = 16_000
LEADING_SILENCE_SAMPLES = 2_205  # 0.1 s at 22,050 Hz = exactly 1,600 samples at 16 kHz
SILENCE_LABEL = "sil"

# espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, options and flags from speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_PHONEME = 0, 1, 5, 7
CHARS_UTF8 = 1
ENDPAUSE = 0x1000  # a sentence pause (~0.3 s of zeros) after the last phone
POS_CHARACTER = 1
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH = 1, 2, 3
# espeak's default volume 100 peaks at full scale (max |x| 32,761 over 240 utterances);
# 40 peaks at -7 dBFS (median utterance -10 dBFS) and saves ~1.3 bits per FLAC sample
VOLUME = 40
STRESS_CHARACTERS = "'\",%=|"


@dataclass(frozen=True)
class Speaker:
    """One espeak-ng voice (language + variant) with its own base rate and pitch."""

    voice: str  # espeak language voice, e.g. "en-us"
    variant: str  # espeak variant file in voices/!v, e.g. "m1"
    split: str
    rate_wpm: int  # words per minute; espeak's default is 175
    pitch: int  # espeak pitch parameter 0-100; 50 is the voice's own

    @property
    def speaker_id(self) -> str:
        return f"{self.voice}+{self.variant}"

    @property
    def gender(self) -> str:
        return {"m": "male", "f": "female"}[self.variant[0]]


# en-gb-x-rp: British received pronunciation; plain "en" would also be British, but
# espeak_SetVoiceByName("en-gb") returns EE_NOT_FOUND and silently keeps the default voice.
SPEAKERS = (
    Speaker("en-us", "m1", "train", 175, 48),
    Speaker("en-us", "f2", "train", 168, 55),
    Speaker("en-gb-x-rp", "m3", "train", 182, 45),
    Speaker("en-gb-x-rp", "f4", "train", 172, 52),
    Speaker("en-gb-scotland", "m6", "train", 165, 50),
    Speaker("en-029", "f1", "train", 178, 50),
    Speaker("en-us", "m4", "test", 170, 47),
    Speaker("en-gb-scotland", "f3", "test", 176, 53),
)


@dataclass(frozen=True)
class UtterancePlan:
    """Everything that determines one utterance's audio."""

    utterance_id: str
    text: str
    speaker: Speaker
    rate_wpm: int
    pitch: int


@dataclass(frozen=True)
class Interval:
    """[start, stop) in samples, with a label."""

    start: int
    stop: int
    label: str


@dataclass(frozen=True)
class Synthesis:
    """espeak-ng output for one utterance at 22,050 Hz: samples and events in order."""

    samples: np.ndarray  # int16
    events: tuple[tuple[int, int, int, str], ...]  # (type, text_position, sample, phoneme)
    espeak_version: str


@dataclass(frozen=True)
class Utterance:
    """One finished row: 16 kHz audio and alignments in 16 kHz samples."""

    plan: UtterancePlan
    samples: np.ndarray  # int16, 16 kHz
    phones: list[Interval]
    words: list[Interval]
    n_merged_words: int
    n_dropped_phones: int


def plan_utterances(n_utterances: int, seed: int) -> list[UtterancePlan]:
    """Utterance i speaks sentence i with speaker i mod 8, its rate ±8 wpm and pitch ±5."""
    sentences = generate_sentences(n_utterances, seed)
    plans = []
    for index, text in enumerate(sentences):
        speaker = SPEAKERS[index % len(SPEAKERS)]
        rng = random.Random(seed * 100_003 + index)
        plans.append(UtterancePlan(
            utterance_id=f"{speaker.speaker_id}/{index:04d}", text=text, speaker=speaker,
            rate_wpm=speaker.rate_wpm + rng.randint(-8, 8), pitch=speaker.pitch + rng.randint(-5, 5),
        ))
    return plans


# ---------------------------------------------------------------- espeak-ng through ctypes


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int), ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _EventId),
    ]  # 40 bytes on x86-64 / aarch64


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def synthesize_in_this_process(plan: UtterancePlan) -> Synthesis:
    """Speak one utterance with espeak-ng. Call once per process: espeak-ng keeps state."""
    lib = ctypes.CDLL(ESPEAK_LIBRARY)
    lib.espeak_Info.restype = ctypes.c_char_p
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int, int, str]] = []

    def on_synth(wav, n_samples, event_array) -> int:
        if wav and n_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while event_array[i].type != EVENT_LIST_TERMINATED:
            event = event_array[i]
            phoneme = event.id.string.decode("utf-8") if event.type == EVENT_PHONEME else ""
            events.append((event.type, event.text_position, event.sample, phoneme))
            i += 1
        return 0

    callback = _SYNTH_CALLBACK(on_synth)  # kept alive until synthesis returns
    rate_hz = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS)
    if rate_hz != ESPEAK_SAMPLE_RATE_HZ:
        raise RuntimeError(f"espeak_Initialize returned {rate_hz}, expected {ESPEAK_SAMPLE_RATE_HZ} Hz")
    lib.espeak_SetSynthCallback(callback)
    voice_name = plan.speaker.speaker_id.encode()
    if (error := lib.espeak_SetVoiceByName(voice_name)) != 0:
        raise RuntimeError(f"{plan.utterance_id}: espeak voice {voice_name!r} not found (error {error})")
    lib.espeak_SetParameter(ESPEAK_RATE, plan.rate_wpm, 0)
    lib.espeak_SetParameter(ESPEAK_PITCH, plan.pitch, 0)
    lib.espeak_SetParameter(ESPEAK_VOLUME, VOLUME, 0)
    text = plan.text.encode("utf-8")
    error = lib.espeak_Synth(ctypes.c_char_p(text), ctypes.c_size_t(len(text) + 1), 0, POS_CHARACTER,
                             0, CHARS_UTF8 | ENDPAUSE, None, None)
    if error != 0:
        raise RuntimeError(f"{plan.utterance_id}: espeak_Synth returned {error}")
    samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    return Synthesis(samples, tuple(events), lib.espeak_Info(None).decode())


def synthesize_in_fresh_processes(plans: list[UtterancePlan], n_workers: int) -> list[Synthesis]:
    """One spawned process per utterance (maxtasksperchild=1), so no state leaks between them."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(n_workers, maxtasksperchild=1) as pool:
        return pool.map(synthesize_in_this_process, plans, chunksize=1)


# ---------------------------------------------------------------- alignment


def clean_phone_label(name: str) -> str:
    """espeak phoneme mnemonic → corpus label: pauses ('_', '_:', ...) become 'sil'."""
    if name.startswith("_"):
        return SILENCE_LABEL
    label = "".join(c for c in name if c not in STRESS_CHARACTERS)
    if not label or not label.isprintable():
        raise ValueError(f"espeak phoneme {name!r} leaves no usable label")
    return label


def _word_starts(text: str) -> dict[int, int]:
    """1-based character position (espeak's text_position) of each word → word index."""
    return {match.start() + 1: index for index, match in enumerate(WORD_PATTERN.finditer(text))}


@dataclass(frozen=True)
class Alignment:
    """Phone and word intervals of one utterance, and what had to be adjusted."""

    phones: list[Interval]
    words: list[Interval]
    n_merged_words: int  # words spoken under the WORD event of the word before
    n_dropped_phones: int  # non-pause phonemes that espeak-ng gave zero samples


@dataclass(frozen=True)
class _Boundary:
    sample: int
    label: str
    word_group: int | None  # ordinal of the WORD event the phone belongs to; None for pauses


def align(plan: UtterancePlan, synthesis: Synthesis) -> Alignment:
    """Phone and word intervals in 22,050 Hz samples of the padded audio.

    Phone i runs from its PHONEME event to the next one; the last ends at the last sample (the
    END event's position). Phones belong to the latest WORD event (checked: each carries that
    event's text position). A word without its own WORD event (espeak-ng speaks "on the", "of
    the", "in the", "I am" as one word) is merged into the word before: one interval labelled
    with both words, joined by a space.
    """
    n_samples = LEADING_SILENCE_SAMPLES + len(synthesis.samples)
    word_starts = _word_starts(plan.text)
    boundaries = [_Boundary(0, SILENCE_LABEL, None)]
    word_event_positions: list[int] = []
    for kind, text_position, sample, phoneme in synthesis.events:
        if kind == EVENT_WORD:
            if text_position not in word_starts:
                raise ValueError(f"{plan.utterance_id}: WORD event at character {text_position} "
                                 f"starts no word of {plan.text!r}")
            word_event_positions.append(text_position)
        elif kind == EVENT_PHONEME:
            label = clean_phone_label(phoneme)
            group = None if label == SILENCE_LABEL else len(word_event_positions) - 1
            if group is not None and (group < 0 or text_position != word_event_positions[group]):
                raise ValueError(f"{plan.utterance_id}: phoneme {phoneme!r} at character {text_position} "
                                 f"is not in the word of the WORD event before it")
            boundaries.append(_Boundary(LEADING_SILENCE_SAMPLES + sample, label, group))
        elif kind == EVENT_END and sample > len(synthesis.samples):
            raise ValueError(f"{plan.utterance_id}: END event at sample {sample} is past the "
                             f"{len(synthesis.samples)} synthesised samples")
    phones, phone_groups, n_dropped = _tile_phones(plan.utterance_id, boundaries, n_samples)
    words = _word_intervals(plan, [word_starts[p] for p in word_event_positions], phones, phone_groups)
    return Alignment(phones, words, len(word_starts) - len(word_event_positions), n_dropped)


def _tile_phones(utterance_id: str, boundaries: list[_Boundary],
                 n_samples: int) -> tuple[list[Interval], list[int | None], int]:
    """Contiguous intervals from phone starts; adjacent pauses merged, zero-length phones dropped.

    espeak-ng gives some post-vocalic /l/ and /r/ (before a pause or a consonant: "small?",
    "always lovely") zero samples: it renders them inside the vowel before, which keeps them.
    """
    phones: list[Interval] = []
    groups: list[int | None] = []
    n_dropped = 0
    stops = [b.sample for b in boundaries[1:]] + [n_samples]
    for boundary, stop in zip(boundaries, stops):
        if stop < boundary.sample:
            raise ValueError(f"{utterance_id}: phone {boundary.label!r} ends at sample {stop} "
                             f"before it starts at {boundary.sample}")
        if stop == boundary.sample:
            n_dropped += boundary.label != SILENCE_LABEL
        elif phones and boundary.label == SILENCE_LABEL == phones[-1].label:
            phones[-1] = Interval(phones[-1].start, stop, SILENCE_LABEL)
        else:
            phones.append(Interval(boundary.sample, stop, boundary.label))
            groups.append(boundary.word_group)
    return phones, groups, n_dropped


def _word_intervals(plan: UtterancePlan, group_first_words: list[int], phones: list[Interval],
                    phone_groups: list[int | None]) -> list[Interval]:
    """One interval per WORD event, from its first phone's start to its last phone's stop."""
    words = words_of(plan.text)
    if group_first_words != sorted(set(group_first_words)) or group_first_words[:1] != [0]:
        raise ValueError(f"{plan.utterance_id}: WORD events start words {group_first_words}; "
                         f"expected increasing word indices from 0")
    intervals = []
    for group, (first, end) in enumerate(zip(group_first_words, group_first_words[1:] + [len(words)])):
        positions = [k for k, g in enumerate(phone_groups) if g == group]
        label = " ".join(words[first:end])
        if not positions or positions != list(range(positions[0], positions[-1] + 1)):
            raise ValueError(f"{plan.utterance_id}: word {label!r} has no phones or a pause inside")
        intervals.append(Interval(phones[positions[0]].start, phones[positions[-1]].stop, label))
    return intervals


def to_16k(intervals: list[Interval], n_samples_16k: int) -> list[Interval]:
    """22,050 Hz sample positions → nearest 16 kHz positions; the last stop is the audio end."""
    def convert(sample: int) -> int:
        nearest = (sample * SAMPLE_RATE_HZ + ESPEAK_SAMPLE_RATE_HZ // 2) // ESPEAK_SAMPLE_RATE_HZ
        return min(nearest, n_samples_16k)
    return [Interval(convert(i.start), convert(i.stop), i.label) for i in intervals]


def resample_to_16k(samples_22k: np.ndarray) -> np.ndarray:
    """int16 at 22,050 Hz → int16 at 16 kHz (soxr HQ); length round(n · 16000 / 22050)."""
    resampled = soxr.resample(samples_22k.astype(np.float64), ESPEAK_SAMPLE_RATE_HZ, SAMPLE_RATE_HZ)
    return np.clip(np.round(resampled), -32768, 32767).astype(np.int16)


def check_alignment(utterance_id: str, phones: list[Interval], words: list[Interval], n_samples: int) -> None:
    """Raise ValueError unless phones tile [0, n_samples) and words sit on phone boundaries."""
    if not phones or phones[0].start != 0 or phones[-1].stop != n_samples:
        raise ValueError(f"{utterance_id}: phones must run from 0 to {n_samples}, found "
                         f"{phones[0].start if phones else None}..{phones[-1].stop if phones else None}")
    for previous, phone in zip(phones, phones[1:]):
        if phone.start != previous.stop:
            raise ValueError(f"{utterance_id}: phone {phone.label!r} starts at {phone.start}, "
                             f"expected {previous.stop} (end of {previous.label!r})")
    for phone in phones:
        if phone.stop <= phone.start:
            raise ValueError(f"{utterance_id}: phone {phone.label!r} at {phone.start} has length "
                             f"{phone.stop - phone.start}, expected > 0")
    starts = {phone.start for phone in phones}
    stops = {phone.stop for phone in phones}
    for previous, word in zip([None] + words, words):
        if word.start not in starts or word.stop not in stops or word.stop <= word.start:
            raise ValueError(f"{utterance_id}: word {word.label!r} [{word.start}, {word.stop}) "
                             f"is not on phone boundaries")
        if previous is not None and word.start < previous.stop:
            raise ValueError(f"{utterance_id}: word {word.label!r} overlaps {previous.label!r}")


def finish(plan: UtterancePlan, synthesis: Synthesis) -> Utterance:
    """Align, pad, resample and check one synthesised utterance."""
    alignment = align(plan, synthesis)
    padded = np.concatenate([np.zeros(LEADING_SILENCE_SAMPLES, np.int16), synthesis.samples])
    samples_16k = resample_to_16k(padded)
    phones, words = to_16k(alignment.phones, len(samples_16k)), to_16k(alignment.words, len(samples_16k))
    check_alignment(plan.utterance_id, phones, words, len(samples_16k))
    return Utterance(plan, samples_16k, phones, words, alignment.n_merged_words, alignment.n_dropped_phones)


# ---------------------------------------------------------------- Parquet


def encode_flac(samples: np.ndarray) -> bytes:
    """16-bit mono FLAC at 16 kHz, highest compression; deterministic for one libFLAC version."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buffer.getvalue()


ALIGNMENT_TYPE = pa.struct([
    ("start", pa.list_(pa.int64())), ("stop", pa.list_(pa.int64())), ("utterance", pa.list_(pa.string())),
])
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("text", pa.string()),
    ("speaker_id", pa.string()),
    ("gender", pa.string()),
    ("dialect", pa.string()),
    ("split", pa.string()),
    ("phonetic_detail", ALIGNMENT_TYPE),  # TIMIT style: 16 kHz samples, [start, stop)
    ("word_detail", ALIGNMENT_TYPE),
])


def _alignment_column(intervals: list[Interval]) -> dict[str, list]:
    return {"start": [i.start for i in intervals], "stop": [i.stop for i in intervals],
            "utterance": [i.label for i in intervals]}


def to_row(utterance: Utterance) -> dict:
    plan = utterance.plan
    return {
        "id": plan.utterance_id,
        "audio": {"bytes": encode_flac(utterance.samples), "path": f"{plan.utterance_id}.flac"},
        "text": plan.text,
        "speaker_id": plan.speaker.speaker_id,
        "gender": plan.speaker.gender,
        "dialect": plan.speaker.voice,
        "split": plan.speaker.split,
        "phonetic_detail": _alignment_column(utterance.phones),
        "word_detail": _alignment_column(utterance.words),
    }


def write_split(rows: list[dict], path: Path, build_facts: dict) -> None:
    """Rows sorted by id, fixed writer options, written atomically: reruns are byte-identical."""
    metadata = {b"pipeline.embedded": json.dumps(build_facts, sort_keys=True).encode()}
    rows = sorted(rows, key=lambda row: row["id"])
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(metadata))
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary, compression="zstd", compression_level=9, row_group_size=64,
                   use_dictionary=["speaker_id", "gender", "dialect", "split"], write_statistics=False)
    os.replace(temporary, path)


# ---------------------------------------------------------------- README

README_TEMPLATE = """\
# Embedded corpus: synthetic English speech with exact phone alignments

{n_utterances} utterances ({minutes:.1f} min, {hours:.3f} h) by {n_speakers} espeak-ng voices, made by
`pipeline/corpus/embedded/build.py` with espeak-ng {espeak_ng_version} (Debian `libespeak-ng1`). Every phone
boundary is the sample position espeak-ng reported for that phoneme: the alignment is exact by
construction.

Regenerate (byte-identical with the same espeak-ng, libsndfile/libFLAC, soxr and pyarrow versions):

```
python -m pipeline.corpus.embedded.build --n-utterances {n_utterances} --seed {seed}
```

## Files

| file | rows | MB |
|---|---|---|
{file_table}

Hugging Face Hub-style Parquet, one file per split, rows sorted by `id`:
`datasets.load_dataset("parquet", data_files=..., streaming=True)` streams it and
`.cast_column("audio", Audio(decode=False))` gives the FLAC bytes.

| column | type | meaning |
|---|---|---|
| `id` | string | `<speaker_id>/<sentence index>`, unique |
| `audio` | struct{{bytes, path}} | FLAC, 16-bit mono, 16 kHz (soxr HQ from 22,050 Hz); path `<id>.flac` |
| `text` | string | the sentence as spoken |
| `speaker_id` | string | espeak voice + variant, e.g. `en-us+m1` |
| `gender` | string | `male` / `female`, from the variant (`m…` / `f…`) |
| `dialect` | string | espeak voice: `en-us`, `en-gb-x-rp` (British RP), `en-gb-scotland`, `en-029` (Caribbean) |
| `split` | string | `train` / `test`, by speaker |
| `phonetic_detail` | struct{{start, stop, utterance: list}} | phones, [start, stop) in 16 kHz samples, tiling the audio |
| `word_detail` | struct{{start, stop, utterance: list}} | words (lower case, no silences), on phone boundaries |

The Parquet key-value metadata `pipeline.corpus.embedded` holds the build facts: `{build_facts_json}`.

## How it was made

- {n_utterances} distinct sentences from `sentences.py` (10 templates, own vocabulary, seed {seed});
  sentence i is spoken by speaker i mod {n_speakers} at the speaker's rate ±8 words/min and pitch ±5,
  volume {volume} (espeak's 100 reaches full scale).
- Each utterance is synthesised in a fresh process, because espeak-ng keeps state between calls (in one
  process the same sentence came out 35,926, 35,906 and 35,924 samples long), through the C API:
  `AUDIO_OUTPUT_SYNCHRONOUS`, `espeakINITIALIZE_PHONEME_EVENTS`, `espeakENDPAUSE`.
- A phone runs from its PHONEME event's sample to the next one; the last ends at the END event, the last
  sample. 0.1 s of zeros is prepended; leading silence, pauses (`_`, `_:` events) and the ~0.3 s
  end-of-sentence pause are `sil`. Positions are converted to 16 kHz by rounding.
- Phone labels are espeak-ng's phoneme mnemonics (ASCII, e.g. `@` schwa, `3:` NURSE, `0` LOT, `t#` flapped
  t, `@L` syllabic l, `r-` linking r, `;` linking palatal glide); stress marks are stripped. One mnemonic
  can sound different by accent (`oU` is [oʊ] in en-us, [əʊ] in en-gb-x-rp):
  `pipeline/corpus/embedded/phone_classes.json` gives each label a broad class and espeak-ng's IPA per dialect.
- espeak-ng speaks some word pairs as one word (one WORD event): they become one word interval labelled
  with both words and a space ({merged_summary}).
- espeak-ng gives some post-vocalic /l/ and /r/ zero samples (rendered inside the vowel before):
  {n_dropped} such phonemes are left out of the phone tier.
- Checked at build time: every phone has positive length, phones tile [0, n_samples), words start and
  stop on phone boundaries and do not overlap; every phone label has a class.

## Speakers

| speaker_id | gender | dialect | split | utterances | seconds |
|---|---|---|---|---|---|
{speaker_table}

Utterance duration: {min_s:.2f}-{max_s:.2f} s, mean {mean_s:.2f} s.

## Phones ({n_labels} labels, {n_phones} intervals)

| label | class | count | seconds |
|---|---|---|---|
{phone_table}

## Licence

The audio is output of espeak-ng {espeak_ng_version} (GPL-3.0-or-later) run on sentences written for
this project; the GPL does not cover a program's output. No MBROLA voices (non-commercial licence).
"""


def render_readme(utterances: list[Utterance], build_facts: dict, file_bytes: dict[str, int]) -> str:
    """data/README.md: provenance, counts and the phone inventory, all computed from the rows."""
    seconds = [len(u.samples) / SAMPLE_RATE_HZ for u in utterances]
    phone_counts = collections.Counter(p.label for u in utterances for p in u.phones)
    phone_seconds = collections.Counter()
    for phone in (p for u in utterances for p in u.phones):
        phone_seconds[phone.label] += (phone.stop - phone.start) / SAMPLE_RATE_HZ
    classes = json.loads(PHONE_CLASSES_PATH.read_text())["classes"]
    merged = collections.Counter(w.label for u in utterances for w in u.words if " " in w.label)
    rows_per_split = collections.Counter(u.plan.speaker.split for u in utterances)
    speaker_rows = []
    for speaker in SPEAKERS:
        mine = [s for u, s in zip(utterances, seconds) if u.plan.speaker == speaker]
        speaker_rows.append(f"| `{speaker.speaker_id}` | {speaker.gender} | {speaker.voice} | {speaker.split} "
                            f"| {len(mine)} | {sum(mine):.1f} |")
    return README_TEMPLATE.format(
        **build_facts, n_speakers=len(SPEAKERS), volume=VOLUME,
        build_facts_json=json.dumps(build_facts, sort_keys=True),
        minutes=sum(seconds) / 60, hours=sum(seconds) / 3600,
        min_s=min(seconds), max_s=max(seconds), mean_s=sum(seconds) / len(seconds),
        file_table="\n".join(f"| `{name}` | {rows_per_split[name.split('-')[0]]} | {n_bytes / 1e6:.2f} |"
                             for name, n_bytes in sorted(file_bytes.items())),
        merged_summary=f"{sum(merged.values())} intervals: "
        + ", ".join(f'"{label}" ×{n}' for label, n in merged.most_common()),
        n_dropped=sum(u.n_dropped_phones for u in utterances),
        speaker_table="\n".join(speaker_rows),
        n_labels=len(phone_counts), n_phones=sum(phone_counts.values()),
        phone_table="\n".join(f"| `{label}` | {classes[label]} | {count} | {phone_seconds[label]:.1f} |"
                              for label, count in sorted(phone_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


# ---------------------------------------------------------------- entry point


def build(out_dir: Path, n_utterances: int, seed: int, n_workers: int) -> list[Utterance]:
    """Synthesise, align, check and write the corpus into `out_dir`."""
    plans = plan_utterances(n_utterances, seed)
    syntheses = synthesize_in_fresh_processes(plans, n_workers)
    utterances = [finish(plan, synthesis) for plan, synthesis in zip(plans, syntheses)]
    _check_phone_classes(utterances)
    versions = {s.espeak_version for s in syntheses}
    build_facts = {"espeak_ng_version": "/".join(sorted(versions)), "n_utterances": n_utterances,
                   "seed": seed, "schema_version": SCHEMA_VERSION}
    out_dir.mkdir(parents=True, exist_ok=True)
    file_bytes = {}
    for split in sorted({s.split for s in SPEAKERS}):
        path = out_dir / f"{split}-00000-of-00001.parquet"
        write_split([to_row(u) for u in utterances if u.plan.speaker.split == split], path, build_facts)
        file_bytes[path.name] = path.stat().st_size
    (out_dir / "README.md").write_text(render_readme(utterances, build_facts, file_bytes))
    return utterances


def _check_phone_classes(utterances: list[Utterance]) -> None:
    classes = json.loads(PHONE_CLASSES_PATH.read_text())["classes"]
    unknown = sorted({p.label for u in utterances for p in u.phones} - set(classes))
    if unknown:
        raise ValueError(f"phone labels {unknown} have no class in {PHONE_CLASSES_PATH}: add them")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--n-utterances", type=int, default=DEFAULT_N_UTTERANCES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    print(f"config: out={args.out} n_utterances={args.n_utterances} seed={args.seed} workers={args.workers}")
    utterances = build(args.out, args.n_utterances, args.seed, args.workers)
    n_seconds = sum(len(u.samples) for u in utterances) / SAMPLE_RATE_HZ
    print(f"wrote {len(utterances)} utterances, {n_seconds:.1f} s, to {args.out}")


if __name__ == "__main__":
    main()
