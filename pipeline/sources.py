"""Corpus readers. Each yields `SourceItem`s one at a time, in a deterministic order.

Nothing is decoded here: an item carries loaders, so that a rank can skip the items of other
ranks' shards (and shards already committed) without reading their audio.

Formats:
- `hf`: a Hugging Face Hub dataset id or local Hub-style Parquet (file or folder), streamed with
  `datasets` (`streaming=True`, `.decode(False)`), TIMIT-style `phonetic_detail`/`word_detail`.
- `timit`: a TIMIT-layout folder (`.WAV` RIFF or NIST SPHERE, `.PHN`, `.WRD`, `.TXT`).
- `textgrid`: a folder of wav/flac files with sibling Praat `.TextGrid` files (MFA output).
- `embedded`: the corpus shipped in `pipeline/embedded/data`, read through the `hf` path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.alignments import Interval, read_detail_column, read_textgrid, read_timit_intervals
from pipeline.records import Quarantine

FORMATS = ("hf", "timit", "textgrid", "embedded")
EMBEDDED_DATA = Path(__file__).parent / "embedded" / "data"
AUDIO_SUFFIXES = {".wav", ".flac"}

TEXT_COLUMNS = ("text", "sentence", "transcription", "normalized_text")
SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id")
TIER_COLUMNS = {"phonetic_detail": "phone", "word_detail": "word"}


@dataclass
class SourceItem:
    """One utterance as the corpus lists it, before anything is decoded."""

    index: int  # position in the stream: shard = index // shard_size
    utterance_id: str
    corpus: str
    load_audio: Callable[[], bytes] | None  # None: the corpus lists no audio for it
    speaker: str | None = None
    split: str | None = None
    text: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # source sample rate → raw intervals per tier; None: the format has no alignments here
    load_tiers: Callable[[int], dict[str, list[Interval]]] | None = None
    alignment_source: str = ""
    error: Quarantine | None = None  # known before decoding (missing file, duplicate id)


@dataclass(frozen=True)
class SourceSpec:
    """What to read. Recorded in the run's facts, so a run cannot mix two corpora."""

    format: str = "embedded"
    corpus: str | None = None  # hub id, file or folder; None for `embedded`
    split: str | None = None  # None: every split, in the dataset's order
    id_column: str = "id"  # `hf`: column(s) whose values key the utterance; "a,b" joins with '/'
    limit: int | None = None

    def facts(self) -> dict:
        corpus = self.corpus
        if corpus and Path(corpus).exists():
            corpus = str(Path(corpus).resolve())
        return {"source": {"format": self.format, "corpus": corpus, "split": self.split,
                           "id_column": self.id_column, "limit": self.limit}}


def iter_items(spec: SourceSpec) -> Iterator[SourceItem]:
    """The stream of items of a corpus, numbered, duplicates marked, cut at `limit`."""
    if spec.format not in FORMATS:
        raise ValueError(f"unknown format {spec.format!r}; expected one of {', '.join(FORMATS)}")
    if spec.format != "embedded" and not spec.corpus:
        raise ValueError(f"--corpus is required for format {spec.format!r}")
    readers = {
        "hf": lambda: _hf_items(spec.corpus, spec.split, spec.id_column),
        "embedded": lambda: _hf_items(str(EMBEDDED_DATA), spec.split, "id", corpus="embedded"),
        "timit": lambda: _timit_items(Path(spec.corpus)),
        "textgrid": lambda: _textgrid_items(Path(spec.corpus)),
    }
    seen: set[str] = set()
    for index, item in enumerate(readers[spec.format]()):
        if spec.limit is not None and index >= spec.limit:
            return
        item.index = index
        if item.utterance_id in seen and item.error is None:
            item.error = Quarantine(
                "duplicate_id",
                f"utterance id {item.utterance_id!r} appeared earlier in the stream (item {index}); "
                "the first one is kept. For corpora whose ids repeat (timit_asr's `id` is the sentence "
                "id) key by several columns, e.g. --id-column speaker_id,id",
            )
            item.utterance_id = f"{item.utterance_id}#dup{index}"
        seen.add(item.utterance_id)
        yield item


# --------------------------------------------------------------------------- hf


def _hf_items(path_or_id: str, split: str | None, id_column: str, corpus: str | None = None) -> Iterator[SourceItem]:
    import logging

    import datasets

    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)  # a data folder's README is no card

    local = Path(path_or_id)
    if local.is_file():
        loaded = datasets.load_dataset("parquet", data_files=str(local), split=split, streaming=True)
        base_dir = local.parent
    else:
        loaded = datasets.load_dataset(path_or_id, split=split, streaming=True)
        base_dir = local if local.is_dir() else None
    splits = {split: loaded} if split else dict(loaded)
    corpus = corpus or (local.stem if local.exists() else path_or_id)
    id_columns = [c.strip() for c in id_column.split(",") if c.strip()]
    for split_name, stream in splits.items():
        stream = stream.decode(False)
        audio_column = _audio_column(stream)
        for row_no, row in enumerate(stream):
            yield _hf_item(row, row_no, split_name, corpus, audio_column, id_columns, base_dir)


def _audio_column(stream) -> str:
    import datasets

    features = stream.features or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Audio):
            return name
    if "audio" in features or not features:
        return "audio"
    raise ValueError(f"no Audio column among {list(features)}: name it 'audio' or cast it to datasets.Audio")


def _hf_item(row: dict, row_no: int, split: str, corpus: str, audio_column: str,
             id_columns: list[str], base_dir: Path | None) -> SourceItem:
    missing = [c for c in id_columns if row.get(c) in (None, "")]
    utterance_id = "/".join(str(row[c]) for c in id_columns) if not missing else f"{split}/row{row_no}"
    audio = row.get(audio_column)
    item = SourceItem(
        index=-1,
        utterance_id=utterance_id,
        corpus=corpus,
        load_audio=_hf_audio_loader(audio, base_dir),
        speaker=_first(row, SPEAKER_COLUMNS),
        split=split,
        text=_first(row, TEXT_COLUMNS),
        metadata={k: str(v) for k, v in row.items() if _is_metadata(k, v, audio_column, id_columns)},
    )
    if missing:
        item.error = Quarantine("missing_id", f"row {row_no} of split {split!r} has no value in id column(s) {missing}")
    if item.load_audio is None:
        item.error = item.error or Quarantine("missing_audio", f"{utterance_id}: the {audio_column!r} column is empty")
    details = {tier: row[col] for col, tier in TIER_COLUMNS.items() if row.get(col)}
    if details:
        item.load_tiers = lambda rate: {t: read_detail_column(d, rate) for t, d in details.items()}
        item.alignment_source = "hf_phonetic_detail"
    return item


def _hf_audio_loader(audio, base_dir: Path | None) -> Callable[[], bytes] | None:
    if isinstance(audio, dict):
        if audio.get("bytes"):
            data = audio["bytes"]
            return lambda: data
        if audio.get("path"):
            path = Path(audio["path"])
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return path.read_bytes
        return None
    if isinstance(audio, (bytes, bytearray)) and audio:
        return lambda: bytes(audio)
    if isinstance(audio, str) and audio:
        return Path(audio).read_bytes
    return None


def _first(row: dict, names: tuple[str, ...]) -> str | None:
    for name in names:
        if row.get(name) not in (None, ""):
            return str(row[name])
    return None


def _is_metadata(key: str, value, audio_column: str, id_columns: list[str]) -> bool:
    skip = {audio_column, *id_columns, *TIER_COLUMNS, *TEXT_COLUMNS, *SPEAKER_COLUMNS}
    return key not in skip and isinstance(value, (str, int, float, bool)) and value is not None


# --------------------------------------------------------------------------- folders


def _stems(root: Path, groups: dict[str, set[str]]) -> dict[str, dict[str, Path]]:
    """One walk of the tree: per group, relative path without extension ('/'-separated) → file,
    for the files whose suffix is in that group's set."""
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist")
    out: dict[str, dict[str, Path]] = {name: {} for name in groups}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        for name, suffixes in groups.items():
            if path.suffix.lower() in suffixes:
                out[name][path.relative_to(root).with_suffix("").as_posix()] = path
    return out


def _timit_items(root: Path) -> Iterator[SourceItem]:
    """utterance_id = path relative to the root without extension, e.g. `TRAIN/DR1/FCJF0/SA1`.

    `.PHN` is required (missing → `missing_alignment`); `.WRD` and `.TXT` are used when present.
    A `.PHN` without audio is listed too, as `missing_audio`."""
    found = _stems(root, {"audio": {".wav"}, "phn": {".phn"}, "wrd": {".wrd"}, "txt": {".txt"}})
    audio, phn, wrd, txt = found["audio"], found["phn"], found["wrd"], found["txt"]
    for uid in sorted(audio.keys() | phn.keys()):
        parts = uid.split("/")
        speaker = parts[-2] if len(parts) >= 2 else None
        meta = {}
        if len(parts) >= 4:
            meta = {"split": parts[-4], "dialect_region": parts[-3]}
        if speaker and speaker[0].upper() in "FM":
            meta["gender"] = speaker[0].upper()
        item = SourceItem(
            index=-1,
            utterance_id=uid,
            corpus="timit",
            load_audio=audio[uid].read_bytes if uid in audio else None,
            speaker=speaker,
            split=meta.get("split"),
            text=_timit_text(txt.get(uid)),
            metadata=meta,
            alignment_source="timit",
        )
        if uid not in audio:
            item.error = Quarantine("missing_audio", f"{uid}: {phn[uid].name} has no audio file beside it")
        elif uid not in phn:
            item.error = Quarantine("missing_alignment", f"{uid}: {audio[uid].name} has no .PHN file beside it")
        else:
            item.load_tiers = _timit_tiers(phn[uid], wrd.get(uid))
        yield item


def _timit_tiers(phn: Path, wrd: Path | None) -> Callable[[int], dict[str, list[Interval]]]:
    def load(rate: int) -> dict[str, list[Interval]]:
        tiers = {"phone": read_timit_intervals(phn, rate)}
        if wrd is not None:
            tiers["word"] = read_timit_intervals(wrd, rate)
        return tiers

    return load


def _timit_text(path: Path | None) -> str | None:
    """`.TXT`: `start end sentence`."""
    if path is None:
        return None
    fields = path.read_text(errors="replace").strip().split(maxsplit=2)
    return fields[2] if len(fields) == 3 else None


LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _textgrid_items(root: Path) -> Iterator[SourceItem]:
    """utterance_id = file stem; speaker from a LibriSpeech-style name (`84-121123-0001` → `84`),
    else the parent folder's name."""
    found = _stems(root, {"audio": AUDIO_SUFFIXES, "grids": {".textgrid"}})
    audio, grids = found["audio"], found["grids"]
    by_stem: dict[str, tuple[Path | None, Path | None]] = {}
    for rel in sorted(audio.keys() | grids.keys()):
        stem = rel.rsplit("/", 1)[-1]
        a, g = by_stem.get(stem, (None, None))
        by_stem[stem] = (audio.get(rel, a), grids.get(rel, g))
    for stem, (wav, grid) in sorted(by_stem.items()):
        match = LIBRISPEECH_NAME.match(stem)
        anchor = wav or grid
        speaker = match.group(1) if match else (anchor.parent.name if anchor.parent != root else None)
        item = SourceItem(
            index=-1,
            utterance_id=stem,
            corpus=root.name,
            load_audio=wav.read_bytes if wav else None,
            speaker=speaker,
            metadata={"chapter": match.group(2)} if match else {},
            alignment_source="textgrid",
        )
        if wav is None:
            item.error = Quarantine("missing_audio", f"{stem}: {grid.name} has no audio file beside it")
        elif grid is None:
            item.error = Quarantine("missing_alignment", f"{stem}: {wav.name} has no .TextGrid beside it")
        else:
            item.load_tiers = lambda rate, g=grid: read_textgrid(g)
        yield item
