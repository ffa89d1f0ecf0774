"""Corpus readers. Each yields `SourceItem`s one at a time, in a deterministic order.

Nothing is decoded here: an item carries loaders, so that a rank can skip the items of other
ranks' shards (and shards already committed) without reading their audio. A bad item never ends
the stream: what is wrong with it is known when listing (`SourceItem.error`) or raised when its
audio, text or tiers are loaded; audio is read only from regular files, size-capped (`audio.read_file`).

Formats:
- `hf`: a Hugging Face Hub dataset id or local Hub-style Parquet (file or folder). Parquet is read
  row group by row group with pyarrow in the order `datasets` streams it (ids, text and tiers of
  every row; a row group's audio column only when one of its items is prepared, so a rank reads
  its own share); other datasets stream through `datasets` (`.decode(False)`). TIMIT-style
  `phonetic_detail`/`word_detail` columns. Offline, a Hub id is read from the local Hub cache.
- `timit`: a TIMIT-layout folder (`.WAV` RIFF or NIST SPHERE, `.PHN`, `.WRD`, `.TXT`), any case.
- `textgrid`: a folder of wav/flac files with Praat `.TextGrid` files (MFA output), paired by
  relative path (`spk1/a.wav` with `spk1/a.TextGrid`; L2-ARCTIC's `wav/` with `textgrid/`).
- `embedded`: the corpus shipped in `pipeline/corpus/embedded/data`, read through the `hf` path.

`--alignments DIR` (`AlignmentTree`): TextGrids or .PHN/.WRD in a tree of their own, joined to any
format's utterances by relative path or file name; they replace the corpus's own alignments.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
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
    load_text: Callable[[], str | None] | None = None  # read when prepared (TIMIT's .TXT), not when listed
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
    alignments: str | None = None  # a folder of TextGrids / .PHN files joined by utterance (AlignmentTree)

    def facts(self) -> dict:
        corpus = self.corpus
        if corpus and Path(corpus).exists():
            corpus = str(Path(corpus).resolve())
        source = {"format": self.format, "corpus": corpus, "split": self.split, "id_column": self.id_column,
                  "limit": self.limit}
        if self.alignments:  # only when set: the facts of runs made before the flag stay equal
            source["alignments"] = str(Path(self.alignments).resolve())
        return {"source": source}


def iter_items(spec: SourceSpec) -> Iterator[SourceItem]:
    """The stream of items of a corpus, numbered, duplicates marked, cut at `limit`."""
    if spec.format not in FORMATS:
        raise ValueError(f"unknown format {spec.format!r}; expected one of {', '.join(FORMATS)}")
    if spec.format != "embedded" and not spec.corpus:
        raise ValueError(f"--corpus is required for format {spec.format!r}")
    own = not spec.alignments
    readers = {
        "hf": lambda: _hf_items(spec.corpus, spec.split, spec.id_column),
        "embedded": lambda: _hf_items(str(EMBEDDED_DATA), spec.split, "id", corpus="embedded"),
        "timit": lambda: _timit_items(Path(spec.corpus), own),
        "textgrid": lambda: _textgrid_items(Path(spec.corpus), own),
    }
    audio.max_audio_bytes()  # a bad PIPELINE_MAX_AUDIO_BYTES is the run's error, not every item's
    stream = readers[spec.format]()
    if spec.alignments:
        stream = AlignmentTree(Path(spec.alignments)).join(stream)
    seen: set[str] = set()
    for index, item in enumerate(stream):
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
    """Parquet data files are read row group by row group with pyarrow: ids, text and tiers of every
    row, audio only when an item's loader asks for it (one row group's audio column at a time), so a
    rank reads the audio of its own shards only. Other layouts stream through `datasets`."""
    local = Path(path_or_id)
    corpus = corpus or (local.stem if local.exists() else path_or_id)
    id_columns = [c.strip() for c in id_column.split(",") if c.strip()]
    files = parquet_files(path_or_id, split)
    if files is None:
        yield from _hf_stream_items(path_or_id, split, id_columns, corpus)
        return
    base_dir = local if local.is_dir() else (local.parent if local.is_file() else None)
    for split_name, paths in files.items():
        row_no = 0
        for path in paths:
            for row, cell_loader, audio_column in _parquet_rows(path):
                yield _hf_item(row, row_no, split_name, corpus, audio_column, id_columns, base_dir, cell_loader)
                row_no += 1


def parquet_files(path_or_id: str, split: str | None) -> dict[str, list[str]] | None:
    """split → Parquet files (local paths or `hf://` URLs) in the order `datasets` streams them; None
    when the dataset is not Parquet (then `datasets` streams it).

    A Hub id is resolved by `datasets` online; offline (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) from
    the local Hub cache (`$HF_HUB_CACHE/datasets--org--name/snapshots/<rev>/`, what `snapshot_download`
    leaves), which `datasets` 5 itself cannot stream from."""
    local = Path(path_or_id)
    if local.is_file():
        if split not in (None, "train"):
            raise ValueError(f"{local} is one Parquet file: its only split is 'train', not {split!r}")
        return {"train": [str(local)]}
    if local.is_dir() and local.resolve() == EMBEDDED_DATA.resolve():  # known files: no `datasets` import (~1-3 s)
        from pipeline.corpus.embedded import data_files

        files = {name: [path] for name, path in data_files().items()}
        if split is not None and split not in files:
            raise ValueError(f"the embedded corpus has no split {split!r}; its splits: {', '.join(files)}")
        return {split: files[split]} if split else files
    import datasets

    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)  # a data folder's README is no card
    where = str(local) if local.is_dir() else (hub_snapshot(path_or_id) or path_or_id)
    config, _, split = split.rpartition(":") if split else ("", "", None)
    names = datasets.get_dataset_config_names(where)
    if not config and len(names) > 1:
        config = datasets.get_dataset_default_config_name(where)
        if config is None or (split is not None and split not in _splits(where, config)):
            config = _config_with_split(where, names, split, path_or_id)
    builder = datasets.load_dataset_builder(where, name=config or None)
    if builder.name != "parquet":
        return None
    files = {str(name): [str(f) for f in paths] for name, paths in (builder.config.data_files or {}).items()}
    if split is not None:
        if split not in files:
            raise ValueError(f"{path_or_id}{f' (config {config!r})' if config else ''} has no split {split!r}; "
                             f"its splits: {', '.join(files)}")
        files = {split: files[split]}
    return files


def _splits(where: str, config: str) -> list[str]:
    import datasets

    return [str(name) for name in (datasets.load_dataset_builder(where, name=config).config.data_files or {})]


def _config_with_split(where: str, names: list[str], split: str | None, path_or_id: str) -> str:
    """A dataset of several configs (openslr/librispeech_asr: all, clean, other) whose default (if any)
    lacks `split`: the one config that has it; `--split CONFIG:SPLIT` names it outright."""
    having = [name for name in names if split is not None and split in _splits(where, name)]
    if len(having) != 1:
        raise ValueError(f"{path_or_id} has configs {', '.join(names)}: name one and a split, "
                         f"e.g. --split {names[0]}:SPLIT"
                         + (f" ({split!r} is in {', '.join(having)})" if having else ""))
    return having[0]


def hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_snapshot(repo_id: str) -> str | None:
    """The local Hub cache's snapshot folder of a dataset id when the Hub is set offline, else None."""
    if not hub_offline() or repo_id.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise FileNotFoundError(
            f"the Hub is set offline and dataset {repo_id!r} is not in the local Hub cache {HF_HUB_CACHE}: "
            f"download it once online (hf download --repo-type dataset {repo_id}) or unset "
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE") from None


def parquet_row_counts(path_or_id: str, split: str | None) -> int | None:
    """Rows of a Parquet dataset from the files' footers (no row read); None when it is not Parquet."""
    files = parquet_files(path_or_id, split)
    if files is None:
        return None
    return sum(_open_parquet(path).metadata.num_rows for paths in files.values() for path in paths)


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    if "://" in path:
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path)


def read_audio_row_group(parquet_file, row_group: int, column: str) -> list:
    """One row group's audio cells (the only place the audio bytes of a Parquet corpus are read)."""
    return parquet_file.read_row_group(row_group, columns=[column]).column(column).to_pylist()


class _RowGroupAudio:
    """The audio column of one row group, read on the first request and kept while its items live."""

    def __init__(self, parquet_file, row_group: int, column: str):
        self.parquet_file, self.row_group, self.column = parquet_file, row_group, column
        self.cells: list | None = None
        self.lock = threading.Lock()

    def cell(self, row: int):
        with self.lock:
            if self.cells is None:
                self.cells = read_audio_row_group(self.parquet_file, self.row_group, self.column)
            return self.cells[row]


def _parquet_rows(path: str) -> Iterator[tuple[dict, Callable[[], object], str]]:
    """(row without its audio, loader of its audio cell, audio column name), row group by row group."""
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    audio_column = _declared_audio_column(schema)
    if audio_column is None:
        if "audio" not in schema.names:
            raise ValueError(f"{path}: no Audio column among {schema.names}: "
                             "name it 'audio' or cast it to datasets.Audio")
        audio_column = "audio"
    others = [name for name in schema.names if name != audio_column]
    for group in range(pf.metadata.num_row_groups):
        n_rows = pf.metadata.row_group(group).num_rows
        rows = pf.read_row_group(group, columns=others).to_pylist() if others else [{} for _ in range(n_rows)]
        audio_cells = _RowGroupAudio(pf, group, audio_column)
        for i, row in enumerate(rows):
            yield row, partial(audio_cells.cell, i), audio_column


def _declared_audio_column(schema) -> str | None:
    """The column that the `datasets` features in the Parquet metadata declare as Audio (read as JSON: no
    `datasets` import), or None."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
        return next((name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Audio"), None)
    except (ValueError, AttributeError):  # foreign or broken metadata: fall back to the column name
        return None


def _hf_stream_items(path_or_id: str, split: str | None, id_columns: list[str], corpus: str) -> Iterator[SourceItem]:
    """Non-Parquet datasets, streamed by `datasets` (every rank reads every row)."""
    import datasets

    local = Path(path_or_id)
    loaded = datasets.load_dataset(path_or_id, split=split, streaming=True)
    base_dir = local if local.is_dir() else None
    splits = {split: loaded} if split else dict(loaded)
    for split_name, stream in splits.items():
        stream = stream.decode(False)
        audio_column = _audio_column(stream)
        for row_no, row in enumerate(stream):
            cell = row.get(audio_column)
            yield _hf_item(row, row_no, split_name, corpus, audio_column, id_columns, base_dir, lambda c=cell: c)


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
             id_columns: list[str], base_dir: Path | None, load_cell: Callable[[], object]) -> SourceItem:
    """One row as an item; a row that cannot be listed is an item with an error, never the stream's end."""
    try:
        return _hf_row_item(row, row_no, split, corpus, audio_column, id_columns, base_dir, load_cell)
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
                 id_columns: list[str], base_dir: Path | None, load_cell: Callable[[], object]) -> SourceItem:
    utterance_id = _row_id(row, row_no, split, id_columns)
    item = SourceItem(
        index=-1,
        utterance_id=utterance_id,
        corpus=corpus,
        load_audio=partial(_hf_audio, load_cell, base_dir, f"{utterance_id}: the {audio_column!r} column is empty"),
        speaker=_first(row, SPEAKER_COLUMNS),
        split=split,
        text=_first(row, TEXT_COLUMNS),
        metadata={k: str(v) for k, v in row.items() if _is_metadata(k, v, audio_column, id_columns)},
    )
    missing = [c for c in id_columns if row.get(c) in (None, "")]
    if missing:
        item.error = Quarantine("missing_id", f"row {row_no} of split {split!r} has no value in id column(s) {missing}")
    details = {col: row[col] for col in TIER_COLUMNS if row.get(col)}
    if details:
        item.load_tiers = partial(_hf_tiers, details, utterance_id)
        item.alignment_source = "hf_phonetic_detail"
    return item


def _hf_tiers(details: dict[str, dict], utterance_id: str, sample_rate_hz: int) -> dict[str, list[Interval]]:
    return {TIER_COLUMNS[col]: read_detail_column(detail, sample_rate_hz, f"{utterance_id} {col}")
            for col, detail in details.items()}


def _hf_audio(load_cell: Callable[[], object], base_dir: Path | None, empty: str) -> bytes:
    """Embedded bytes, or a path read by `audio.read_file` (regular files only, size-capped); an
    empty cell is `missing_audio`. The cell is fetched only now: a rank reads its own rows' audio."""
    cell = load_cell()
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            path = Path(cell["path"])
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return audio.read_file(path)
    elif isinstance(cell, (bytes, bytearray)) and cell:
        return bytes(cell)
    elif isinstance(cell, str) and cell:
        return audio.read_file(Path(cell))
    raise Quarantine("missing_audio", empty)


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


def _timit_items(root: Path, own_alignments: bool = True) -> Iterator[SourceItem]:
    """utterance_id = path relative to the root without extension, e.g. `TRAIN/DR1/FCJF0/SA1`.

    `.PHN` is required (missing → `missing_alignment`); `.WRD` and `.TXT` are used when present.
    A `.PHN` without audio is listed too, as `missing_audio`; two files of one kind whose names
    differ only in case (`SA2.WAV`, `SA2.wav`) as `duplicate_file`."""
    found = _stems(root, {"audio": {".wav"}, "phn": {".phn"}, "wrd": {".wrd"}, "txt": {".txt"}})
    if not own_alignments:  # `--alignments DIR`: the tiers come from DIR
        found["phn"], found["wrd"] = {}, {}
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
            error=_pair_error(uid, root, found, wav, _one(phn, uid) if own_alignments else wav, ".PHN"),
        )
        if item.error is None:
            if own_alignments:
                item.load_tiers = _timit_tiers(_one(phn, uid), _one(wrd, uid))
            item.load_text = partial(_timit_text, _one(txt, uid))
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
# per-speaker folders of one kind of file (L2-ARCTIC: `ABA/wav/`, `ABA/textgrid/`, `ABA/annotation/`,
# `ABA/transcript/`): left out of the key, so that `ABA/wav/a0001.wav` pairs with `ABA/textgrid/a0001.TextGrid`
LAYOUT_FOLDERS = {"wav", "textgrid", "annotation", "transcript"}
TEXT_SUFFIXES = {".txt", ".lab"}  # a transcript beside the audio (MFA's input, L2-ARCTIC's transcript/)


def layout_key(rel: str) -> str:
    """A relative path without suffix, with a last folder named wav/textgrid/annotation/transcript left out."""
    parts = rel.split("/")
    if len(parts) >= 2 and parts[-2].lower() in LAYOUT_FOLDERS:
        del parts[-2]
    return "/".join(parts)


def _textgrid_items(root: Path, own_alignments: bool = True) -> Iterator[SourceItem]:
    """Audio (wav, flac) and a Praat `.TextGrid` with the same key make one utterance; the key is the
    relative path without suffix, a `wav/`, `textgrid/`, `annotation/` or `transcript/` folder left
    out (`layout_key`), so `spk1/a.wav` pairs with `spk1/a.TextGrid` and L2-ARCTIC's `ABA/wav/a.wav`
    with `ABA/textgrid/a.TextGrid` (or, where `textgrid/` has none, `ABA/annotation/a.TextGrid`).
    A `.txt`/`.lab` with the same key is the transcript.

    utterance_id = the key (`spk1/arctic_a0001`, `ABA/arctic_a0001`; a flat folder gives the bare
    stem), so repeated stems in speaker folders (L2-ARCTIC) stay apart; a LibriSpeech-style name
    (`84-121123-0001`, unique in its corpus by construction) is the id itself. speaker = the name's
    first field for those, else the key's parent folder (None at the top level).
    `own_alignments=False` (`--alignments DIR`): audio only; the tiers come from DIR."""
    found: dict[str, dict[str, list[Path]]] = {"audio": {}, "grids": {}, "annotation": {}, "text": {}}
    for rel, path in walk_files(root):
        suffix = Path(rel).suffix.lower()
        stem_rel = rel[: len(rel) - len(suffix)]
        parent = stem_rel.rpartition("/")[0].rpartition("/")[2].lower()
        group = ("audio" if suffix in AUDIO_SUFFIXES else
                 ("annotation" if parent == "annotation" else "grids") if suffix == ".textgrid" and own_alignments else
                 "text" if suffix in TEXT_SUFFIXES else None)
        if group is not None:
            found[group].setdefault(layout_key(stem_rel), []).append(path)
    audio_files, grids, annotation = found["audio"], found["grids"], found["annotation"]
    keys = audio_files.keys() | (grids.keys() | annotation.keys() if own_alignments else set())
    for key in sorted(keys):
        folder, _, stem = key.rpartition("/")
        match = LIBRISPEECH_NAME.match(stem)
        wav = _one(audio_files, key)
        grid = _one(grids, key) or _one(annotation, key)
        pairing = {k: v for k, v in found.items() if k != ("annotation" if key in grids else "grids")}
        item = SourceItem(
            index=-1,
            utterance_id=stem if match else key,
            corpus=root.name,
            load_audio=partial(audio.read_file, wav) if wav else None,
            speaker=match.group(1) if match else (folder.rpartition("/")[2] or None),
            metadata={"chapter": match.group(2)} if match else {},
            alignment_source="textgrid",
            error=(_pair_error(key, root, pairing, wav, grid, ".TextGrid") if own_alignments
                   else _pair_error(key, root, {"audio": audio_files}, wav, wav, "")),
        )
        if item.error is None:
            if own_alignments:
                item.load_tiers = partial(_textgrid_tiers, grid)
            if _one(found["text"], key):
                item.load_text = partial(_plain_text, _one(found["text"], key))
        yield item


def _textgrid_tiers(grid: Path, sample_rate_hz: int) -> dict[str, list[Interval]]:
    return read_textgrid(grid)  # times in seconds: the sample rate is not needed


def _plain_text(path: Path) -> str | None:
    return " ".join(read_text(path).split()) or None


# --------------------------------------------------------------------------- alignments from their own tree

ALIGNMENT_SUFFIXES = {".textgrid": "grid", ".phn": "phn", ".wrd": "wrd"}
AUDIO_ID_SUFFIX = re.compile(r"\.(wav|flac|mp3|ogg|opus|sph)$")
PROBE_ITEMS = 200  # if none of the first this many utterances has an alignment file, the folder is wrong


class AlignmentTree:
    """`--alignments DIR`: TextGrids (MFA) or TIMIT `.PHN`/`.WRD` files in a tree of their own, joined
    to utterances by key, case-insensitively: first the whole relative path without suffix (a
    `wav/`/`textgrid/`/`annotation/` folder left out, `layout_key`) equal to the utterance id or
    ending with it at a folder boundary (or the id ending with it), then the file name alone where
    it is unique in the tree (`84-121123-0001.TextGrid` in MFA's `<speaker>/<chapter>/` layout joins
    LibriSpeech's id `84-121123-0001`). An utterance without a file is `missing_alignment`."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise FileNotFoundError(f"--alignments {root}: no such folder")
        self.root = root
        self.files: dict[str, dict[str, list[Path]]] = {}
        for rel, path in walk_files(root):
            suffix = Path(rel).suffix.lower()
            if suffix in ALIGNMENT_SUFFIXES:
                key = layout_key(rel[: len(rel) - len(suffix)]).lower()
                self.files.setdefault(key, {}).setdefault(ALIGNMENT_SUFFIXES[suffix], []).append(path)
        if not self.files:
            raise FileNotFoundError(f"--alignments {root}: no .TextGrid, .PHN or .WRD file in it")
        self.by_stem: dict[str, list[str]] = {}
        for key in self.files:
            self.by_stem.setdefault(key.rpartition("/")[2], []).append(key)
        self.first_checked = False

    def find(self, utterance_id: str) -> str | None:
        uid = layout_key(utterance_id).lower()
        uid = AUDIO_ID_SUFFIX.sub("", uid)  # Common Voice keys clips by file name: `clip.mp3`
        if uid in self.files:
            return uid
        candidates = self.by_stem.get(uid.rpartition("/")[2], [])
        tails = [k for k in candidates if k.endswith("/" + uid) or uid.endswith("/" + k)]
        if len(tails) == 1:
            return tails[0]
        return candidates[0] if len(candidates) == 1 and "/" not in uid else None

    def attach(self, item: SourceItem) -> bool:
        """Give `item` its tiers from the tree (True), or make it `missing_alignment` (False)."""
        key = self.find(item.utterance_id)
        if key is None:
            item.load_tiers, item.alignment_source = None, ""
            item.error = Quarantine(
                "missing_alignment", f"{item.utterance_id}: no .TextGrid (or .PHN) for it in {self.root}, "
                                     "by relative path or by file name")
            return False
        files = self.files[key]
        many = next((paths for paths in files.values() if len(paths) > 1), None)
        if many:
            names = " and ".join(_rel(p, self.root) for p in many)
            item.error = Quarantine("duplicate_file", f"{item.utterance_id}: {names} both name this utterance's "
                                                      "alignment: which one is meant is ambiguous; remove one")
            return True
        if "grid" in files:
            grid = files["grid"][0]
            if not self.first_checked:
                self._check_tiers(grid)
            item.load_tiers, item.alignment_source = partial(_required_phone_tier, grid), "textgrid"
        elif "phn" in files:
            item.load_tiers = _timit_tiers(files["phn"][0], (files.get("wrd") or [None])[0])
            item.alignment_source = "timit"
        else:
            item.error = Quarantine("missing_alignment", f"{item.utterance_id}: {_rel(files['wrd'][0], self.root)} "
                                                         "has words but no .PHN beside it")
        return True

    def _check_tiers(self, grid: Path) -> None:
        """The first TextGrid joined must hold a phone tier: else every utterance would be quarantined."""
        self.first_checked = True
        try:
            tiers = read_textgrid(grid)
        except Quarantine:
            return  # that one grid's own problem: its utterance is quarantined when prepared
        if "phone" not in tiers:
            raise ValueError(
                f"--alignments {self.root}: {_rel(grid, self.root)} has no phone tier: tiers found {sorted(tiers)}; "
                "expected MFA's 'phones' and 'words' (or 'phone'/'word'): rename the tiers")

    def join(self, items: Iterator[SourceItem]) -> Iterator[SourceItem]:
        """`items` with their tiers from the tree. If none of the first PROBE_ITEMS utterances has an
        alignment file, the folder is the wrong one: ValueError naming two ids of each side."""
        pending: list[SourceItem] = []
        matched = False
        for item in items:
            if item.error is None:
                matched = self.attach(item) or matched
            if matched:
                yield from pending
                pending = []
                yield item
                continue
            pending.append(item)
            if len(pending) >= PROBE_ITEMS:
                break
        if not matched and any(it.error is None or it.error.reason == "missing_alignment" for it in pending):
            ids = [it.utterance_id for it in pending][:2]
            keys = sorted(self.files)[:2]
            raise ValueError(
                f"--alignments {self.root} matches none of the first {len(pending)} utterances: utterance ids "
                f"look like {', '.join(map(repr, ids))}, alignment files like {', '.join(map(repr, keys))} (joined by "
                "relative path without suffix, or by file name): point --alignments at the folder that mirrors "
                "the corpus, or key the utterances with --id-column")
        yield from pending


def _required_phone_tier(grid: Path, sample_rate_hz: int) -> dict[str, list[Interval]]:
    tiers = read_textgrid(grid)
    if "phone" not in tiers:
        raise Quarantine("missing_alignment", f"{grid.name}: no phone tier: tiers found {sorted(tiers)}; "
                                              "expected MFA's 'phones' and 'words'")
    return tiers
