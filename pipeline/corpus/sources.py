"""Corpus readers. Each yields `SourceItem`s one at a time, in a deterministic order.

Nothing is decoded here: an item carries loaders, so that a rank can skip the items of other
ranks' shards (and shards already committed) without reading their audio. A bad item never ends
the stream: what is wrong with it is known when listing (`SourceItem.error`) or raised when its
audio or tiers are loaded; audio is read only from regular files, size-capped (`audio.read_file`).

Formats:
- `hf`: a Hugging Face Hub dataset id or local Hub-style Parquet (file or folder), streamed with
  `datasets` (`streaming=True`, `.decode(False)`), TIMIT-style `phonetic_detail`/`word_detail`.
- `timit`: a TIMIT-layout folder (`.WAV` RIFF or NIST SPHERE, `.PHN`, `.WRD`, `.TXT`).
- `textgrid`: a folder of wav/flac files with sibling Praat `.TextGrid` files (MFA output), paired
  by relative path: `spk1/a.wav` with `spk1/a.TextGrid` only.
- `embedded`: the corpus shipped in `pipeline/corpus/embedded/data`, read through the `hf` path.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from pipeline.corpus import audio
from pipeline.corpus.alignments import Interval, read_detail_column, read_text, read_textgrid, read_timit_intervals
from pipeline.corpus.records import Quarantine

log = logging.getLogger(__name__)

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
    audio.max_audio_bytes()  # a bad PIPELINE_MAX_AUDIO_BYTES is the run's error, not every item's
    seen: set[str] = set()
    for index, item in enumerate(readers[spec.format]()):
        if spec.limit is not None and index >= spec.limit:
            return
        item.index = index
        if item.utterance_id in seen:
            item.error = item.error or Quarantine(
                "duplicate_id",
                f"utterance id {item.utterance_id!r} appeared earlier in the stream (item {index}); "
                "the first one is kept. For corpora whose ids repeat (timit_asr's `id` is the sentence "
                "id) key by several columns, e.g. --id-column speaker_id,id",
            )
            item.utterance_id = f"{item.utterance_id}#dup{index}"  # a quarantine row never names a kept id
        seen.add(item.utterance_id)
        yield item


# --------------------------------------------------------------------------- hf


def _hf_items(path_or_id: str, split: str | None, id_column: str, corpus: str | None = None) -> Iterator[SourceItem]:
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
    """One row as an item; a row that cannot be listed is an item with an error, never the stream's end."""
    try:
        return _hf_row_item(row, row_no, split, corpus, audio_column, id_columns, base_dir)
    except Exception as err:  # noqa: BLE001 - one odd row must not end the stream on every rerun
        utterance_id = _row_id(row, row_no, split, id_columns)
        error = Quarantine("prepare_error", f"{utterance_id}: row {row_no} of split {split!r}: "
                                            f"{type(err).__name__}: {err}")
        return SourceItem(index=-1, utterance_id=utterance_id, corpus=corpus, load_audio=None, split=split,
                          error=error)


def _row_id(row: dict, row_no: int, split: str, id_columns: list[str]) -> str:
    if any(row.get(c) in (None, "") for c in id_columns):
        return f"{split}/row{row_no}"
    return "/".join(str(row[c]) for c in id_columns)


def _hf_row_item(row: dict, row_no: int, split: str, corpus: str, audio_column: str,
                 id_columns: list[str], base_dir: Path | None) -> SourceItem:
    utterance_id = _row_id(row, row_no, split, id_columns)
    item = SourceItem(
        index=-1,
        utterance_id=utterance_id,
        corpus=corpus,
        load_audio=_hf_audio_loader(row.get(audio_column), base_dir),
        speaker=_first(row, SPEAKER_COLUMNS),
        split=split,
        text=_first(row, TEXT_COLUMNS),
        metadata={k: str(v) for k, v in row.items() if _is_metadata(k, v, audio_column, id_columns)},
    )
    missing = [c for c in id_columns if row.get(c) in (None, "")]
    if missing:
        item.error = Quarantine("missing_id", f"row {row_no} of split {split!r} has no value in id column(s) {missing}")
    if item.load_audio is None:
        item.error = item.error or Quarantine("missing_audio", f"{utterance_id}: the {audio_column!r} column is empty")
    details = {col: row[col] for col in TIER_COLUMNS if row.get(col)}
    if details:
        item.load_tiers = partial(_hf_tiers, details, utterance_id)
        item.alignment_source = "hf_phonetic_detail"
    return item


def _hf_tiers(details: dict[str, dict], utterance_id: str, sample_rate_hz: int) -> dict[str, list[Interval]]:
    return {TIER_COLUMNS[col]: read_detail_column(detail, sample_rate_hz, f"{utterance_id} {col}")
            for col, detail in details.items()}


def _hf_audio_loader(cell, base_dir: Path | None) -> Callable[[], bytes] | None:
    """Embedded bytes, or a path read by `audio.read_file` (regular files only, size-capped)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            data = cell["bytes"]
            return lambda: data
        if cell.get("path"):
            path = Path(cell["path"])
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return partial(audio.read_file, path)
        return None
    if isinstance(cell, (bytes, bytearray)) and cell:
        return lambda: bytes(cell)
    if isinstance(cell, str) and cell:
        return partial(audio.read_file, Path(cell))
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


def walk_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under `root` that is not a folder, as (relative path '/'-separated, path), sorted.

    Links to folders are followed, each real folder read once (a link loop or a second link to a
    folder already read is skipped with a warning). Files and folders whose names start with '.'
    are left out. Fifos, devices and broken links are listed: their loaders quarantine them, so
    nothing is dropped unseen."""
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist")
    out, seen = [], {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            log.warning("%s is the folder %s again (a link): read once, skipped here", folder, seen[real])
            dirs[:] = []
            continue
        seen[real] = folder
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                path = Path(folder, name)
                out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def _stems(root: Path, groups: dict[str, set[str]]) -> dict[str, dict[str, list[Path]]]:
    """One walk of the tree: per group, relative path without extension ('/'-separated) → the files
    with one of that group's suffixes (case-insensitive). More than one file (`SA2.WAV` beside
    `SA2.wav`, `a.wav` beside `a.flac`) makes the utterance ambiguous (`duplicate_file`)."""
    out: dict[str, dict[str, list[Path]]] = {name: {} for name in groups}
    for rel, path in walk_files(root):
        suffix = Path(rel).suffix
        for name, suffixes in groups.items():
            if suffix.lower() in suffixes:
                out[name].setdefault(rel[: len(rel) - len(suffix)], []).append(path)
    return out


def _one(files: dict[str, list[Path]], uid: str) -> Path | None:
    return files[uid][0] if uid in files else None


def _pair_error(uid: str, root: Path, found: dict[str, dict[str, list[Path]]], wav: Path | None,
                alignment: Path | None, kind: str) -> Quarantine | None:
    """Why the files of `uid` cannot make an utterance: ambiguous, audio or alignment missing."""
    for files in found.values():
        if len(files.get(uid, ())) > 1:
            names = " and ".join(_rel(p, root) for p in files[uid])
            return Quarantine(
                "duplicate_file",
                f"{uid}: {names} both name this utterance (their names differ only in case or audio suffix): "
                "which one is meant is ambiguous; remove or rename one of them",
            )
    if wav is None:
        return Quarantine("missing_audio", f"{uid}: {_rel(alignment, root)} has no audio file beside it")
    if alignment is None:
        return Quarantine("missing_alignment", f"{uid}: {_rel(wav, root)} has no {kind} file beside it")
    return None


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _as_quarantine(uid: str, err: Exception) -> Quarantine:
    """An error met while listing an item, as that item's quarantine (never the stream's end)."""
    if isinstance(err, Quarantine):
        return err
    return Quarantine("prepare_error", f"{uid}: {type(err).__name__}: {err}")


def _timit_items(root: Path) -> Iterator[SourceItem]:
    """utterance_id = path relative to the root without extension, e.g. `TRAIN/DR1/FCJF0/SA1`.

    `.PHN` is required (missing → `missing_alignment`); `.WRD` and `.TXT` are used when present.
    A `.PHN` without audio is listed too, as `missing_audio`; two files of one kind whose names
    differ only in case (`SA2.WAV`, `SA2.wav`) as `duplicate_file`."""
    found = _stems(root, {"audio": {".wav"}, "phn": {".phn"}, "wrd": {".wrd"}, "txt": {".txt"}})
    audio_files, phn, wrd, txt = found["audio"], found["phn"], found["wrd"], found["txt"]
    for uid in sorted(audio_files.keys() | phn.keys()):
        parts = uid.split("/")
        speaker = parts[-2] if len(parts) >= 2 else None
        meta = {}
        if len(parts) >= 4:
            meta = {"split": parts[-4], "dialect_region": parts[-3]}
        if speaker and speaker[0].upper() in "FM":
            meta["gender"] = speaker[0].upper()
        wav = _one(audio_files, uid)
        item = SourceItem(
            index=-1,
            utterance_id=uid,
            corpus="timit",
            load_audio=partial(audio.read_file, wav) if wav else None,
            speaker=speaker,
            split=meta.get("split"),
            metadata=meta,
            alignment_source="timit",
            error=_pair_error(uid, root, found, wav, _one(phn, uid), ".PHN"),
        )
        if item.error is None:
            item.load_tiers = _timit_tiers(_one(phn, uid), _one(wrd, uid))
            try:
                item.text = _timit_text(_one(txt, uid))
            except Exception as err:  # noqa: BLE001 - an unreadable .TXT is this item's problem only
                item.error = _as_quarantine(uid, err)
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
    fields = read_text(path).strip().split(maxsplit=2)
    return fields[2] if len(fields) == 3 else None


LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _textgrid_items(root: Path) -> Iterator[SourceItem]:
    """Audio (wav, flac) and a Praat `.TextGrid` with the same relative path make one utterance.

    utterance_id = the relative path without suffix (`spk1/arctic_a0001`; a flat folder gives the
    bare stem), so repeated stems in speaker folders (L2-ARCTIC) stay apart; a LibriSpeech-style
    name (`84-121123-0001`, unique in its corpus by construction) is the id itself. speaker = the
    name's first field for those, else the parent folder (None for files at the top level)."""
    found = _stems(root, {"audio": AUDIO_SUFFIXES, "grids": {".textgrid"}})
    audio_files, grids = found["audio"], found["grids"]
    for rel in sorted(audio_files.keys() | grids.keys()):
        folder, _, stem = rel.rpartition("/")
        match = LIBRISPEECH_NAME.match(stem)
        uid = stem if match else rel
        wav, grid = _one(audio_files, rel), _one(grids, rel)
        item = SourceItem(
            index=-1,
            utterance_id=uid,
            corpus=root.name,
            load_audio=partial(audio.read_file, wav) if wav else None,
            speaker=match.group(1) if match else (folder.rpartition("/")[2] or None),
            metadata={"chapter": match.group(2)} if match else {},
            alignment_source="textgrid",
            error=_pair_error(rel, root, found, wav, grid, ".TextGrid"),
        )
        if item.error is None:
            item.load_tiers = partial(_textgrid_tiers, grid)
        yield item


def _textgrid_tiers(grid: Path, sample_rate_hz: int) -> dict[str, list[Interval]]:
    return read_textgrid(grid)  # times in seconds: the sample rate is not needed
