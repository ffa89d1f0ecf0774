"""Utterance attributes from a file: speaker, gender, age, dialect… for colouring and `--by`.

Corpora carry some metadata themselves (TIMIT's path, a Hub dataset's columns; they land in
`utterances.metadata`). Others keep it beside the audio: the original study read Kaldi
`utt2spk`-style files. `attach_metadata` adds such a file's columns to a run as the table
`utterance_attributes(run, utterance_id, key, value)`; `analyze --by KEY`, the balanced sample's
group column and the report's metadata colouring read it before `utterances.metadata`.

Formats: CSV, TSV or Parquet with an `utterance_id` column (every other column is an attribute),
or a Kaldi two-column file named `utt2<key>` (`utt2gender`: "<utterance_id> <value>" per line).
Speaker-keyed files give every utterance of a speaker (`utterances.speaker`) the speaker's values:
CSV/TSV/Parquet with a `speaker` column and no `utterance_id` (an L2-ARCTIC speaker → L1 table),
Kaldi `spk2<key>` files, and VCTK's `speaker-info.txt` (ID AGE GENDER ACCENTS REGION; its `225` and
`p225` both match the speaker folder `p225`).
Ids the run does not have are counted and reported, not written. Each file is stored apart, keyed
by its resolved path, so `train/utt2gender` and `test/utt2gender` both land; a rerun with the same
file replaces its rows. An (utterance, key) must come from one file only: listed twice in one file,
or by two files (attached now or before), it is an error naming the files, the utterance and the
values, and nothing is written.

    python -m pipeline metadata --run R FILE [FILE …]
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.warehouse import Warehouse, keys
from pipeline.warehouse.schemas import UTTERANCE_ATTRIBUTES as ATTRIBUTES_SCHEMA

KALDI_NAME = re.compile(r"^utt2([A-Za-z0-9_]+)$")
KALDI_SPEAKER_NAME = re.compile(r"^spk2([A-Za-z0-9_]+)$")
VCTK_NAME = re.compile(r"^speaker[-_]info\.txt$", re.IGNORECASE)
SPEAKER_COLUMNS = ("speaker", "speaker_id")


def read_speaker_attributes(path: str | Path) -> pa.Table | None:
    """A speaker-keyed file → rows (utterance_id = the speaker, key, value); None if `path` is keyed by utterance."""
    path = Path(path)
    if VCTK_NAME.match(path.name):
        return _vctk_speaker_info(path)
    kaldi = KALDI_SPEAKER_NAME.match(path.name)
    if kaldi:
        return _kaldi(path, kaldi.group(1), "speaker")
    if path.suffix in (".csv", ".tsv", ".parquet"):
        table = _table(path)
        column = next((c for c in SPEAKER_COLUMNS if c in table.column_names), None)
        if "utterance_id" not in table.column_names and column is not None:
            return _long(table.rename_columns(["utterance_id" if c == column else c for c in table.column_names]))
    return None


def _vctk_speaker_info(path: Path) -> pa.Table:
    """VCTK's `speaker-info.txt`: a header `ID AGE GENDER ACCENTS REGION [COMMENTS]`, then one speaker a
    line, fields apart by spaces; the region (several words) runs to the end of the line."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or lines[0].split()[0].upper() != "ID":
        raise ValueError(f"{path}: expected VCTK's header 'ID AGE GENDER ACCENTS REGION', found {lines[:1]!r}")
    keys = [k.lower() for k in lines[0].split()[1:5]]
    rows = []
    for line in lines[1:]:
        fields = line.split(maxsplit=len(keys))
        speaker, values = fields[0], fields[1:]
        for key, value in zip(keys, values):
            rows.append({"utterance_id": speaker, "key": key, "value": " ".join(value.split())})
    return pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA)


def _kaldi(path: Path, key: str, what: str) -> pa.Table:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<{what}> <value>', got {line!r}")
        rows.append({"utterance_id": parts[0], "key": key, "value": parts[1].strip()})
    return pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA)


def _table(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ","))


def _long(table: pa.Table) -> pa.Table:
    """A wide table keyed by `utterance_id` → rows (utterance_id, key, value)."""
    ids = table.column("utterance_id").cast(pa.string())
    parts = [pa.table({"utterance_id": ids, "key": pa.array([name] * table.num_rows, pa.string()),
                       "value": table.column(name).cast(pa.string())}, schema=ATTRIBUTES_SCHEMA)
             for name in table.column_names if name != "utterance_id"]
    return pa.concat_tables(parts) if parts else ATTRIBUTES_SCHEMA.empty_table()


def by_speaker(table: pa.Table, speakers: dict[str, list[str]]) -> tuple[pa.Table, int]:
    """Speaker rows → one row per utterance of that speaker (`speakers`: speaker → utterance ids of the
    run); VCTK's bare `225` matches the speaker `p225`. Returns the rows and how many speaker rows matched none."""
    rows, unmatched = [], 0
    for row in table.to_pylist():
        speaker = row["utterance_id"]
        ids = speakers.get(speaker) or speakers.get(f"p{speaker}", [])
        unmatched += not ids
        rows += [{**row, "utterance_id": u} for u in ids]
    return pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA), unmatched


def read_attributes(path: str | Path) -> pa.Table:
    """One utterance-keyed attribute file → rows (utterance_id, key, value), values as strings."""
    path = Path(path)
    kaldi = KALDI_NAME.match(path.name)
    if kaldi:
        return _kaldi(path, kaldi.group(1), "utterance_id")
    if path.suffix not in (".parquet", ".csv", ".tsv"):
        raise ValueError(f"{path}: not a .csv, .tsv, .parquet, Kaldi utt2<key>/spk2<key> or VCTK speaker-info.txt file")
    table = _table(path)
    if "utterance_id" not in table.column_names:
        raise ValueError(f"{path}: no utterance_id column (nor a speaker column; columns: "
                         f"{', '.join(table.column_names)})")
    return _long(table)


def attach_metadata(run: str, files: list[str], warehouse: str = "storage") -> dict[str, int]:
    """Add the attributes of `files` to `run` (table utterance_attributes). Returns counts:
    `rows` stored, `unknown_ids` (rows for utterances the run lacks, left out), `files`."""
    wh = Warehouse(warehouse)
    with wh.lock(run):
        con = wh.connect(runs=[run])
        rows = con.execute("select utterance_id, speaker from utterances where run = ?", [run]).fetchall()
        known = {u for u, _ in rows}
        if not known:
            raise ValueError(f"run {run!r} has no utterances in {wh.root}: extract (or ingest) it first")
        speakers: dict[str, list[str]] = {}
        for u, speaker in sorted(rows):
            if speaker is not None:
                speakers.setdefault(speaker, []).append(u)
        paths = sorted({Path(f).resolve() for f in files})
        tables = {path: _known_rows(path, known, speakers) for path in paths}
        stored = _stored_values(wh, run, exclude=set(paths))
        for path, (table, _) in tables.items():
            _check_one_source(path, table, stored)
        counts = {"rows": 0, "unknown_ids": 0, "files": 0}
        for path, (table, unknown) in tables.items():
            stage, prefix = _names(path)
            record = wh.write("utterance_attributes", table, run, 0, file_prefix=prefix)
            wh.commit(run, stage, 0, [record], source=str(path))
            _retire_old_names(wh, run, path, stage)
            counts["rows"] += table.num_rows
            counts["unknown_ids"] += unknown
            counts["files"] += 1
    return counts


def _known_rows(path: Path, known: set[str], speakers: dict[str, list[str]]) -> tuple[pa.Table, int]:
    """The file's rows with a value for utterances of the run, and how many rows named other ids
    (for a speaker-keyed file: speakers the run does not have)."""
    by_speakers = read_speaker_attributes(path)
    if by_speakers is not None:
        table, unmatched = by_speaker(by_speakers.filter(pa.compute.is_valid(pa.compute.field("value"))), speakers)
        return _unique(path, table), unmatched
    table = _unique(path, read_attributes(path).filter(pa.compute.is_valid(pa.compute.field("value"))))
    mask = pa.array([u in known for u in table.column("utterance_id").to_pylist()], pa.bool_())
    kept = table.filter(mask)
    return kept, table.num_rows - kept.num_rows


def _unique(path: Path, table: pa.Table) -> pa.Table:
    seen: set[tuple[str, str]] = set()
    for key in zip(table.column("utterance_id").to_pylist(), table.column("key").to_pylist()):
        if key in seen:
            raise ValueError(f"{path}: utterance {key[0]!r} has attribute {key[1]!r} twice")
        seen.add(key)
    return table


def _names(path: Path) -> tuple[str, str]:
    """Commit stage and file prefix of one attribute file: its name (readable) and a hash of its
    resolved path (unique: two folders' `utt2gender` are two files)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.name)[:40]
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return keys.metadata_stage(name, tag), f"attr_{name}_{tag}"


def _stored_values(wh: Warehouse, run: str, exclude: set[Path]) -> dict[tuple[str, str], tuple[str, str]]:
    """(utterance_id, key) → (value, source file) of the attributes stored for `run` by other files."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for (_, stage, _), rec in sorted(wh.commits(run).items()):
        if keys.kind(stage) != keys.METADATA or Path(rec.get("source", "")) in exclude:
            continue
        for f in rec["files"]:
            for row in wh.read_table(f["path"], columns=["utterance_id", "key", "value"]).to_pylist():
                out[(row["utterance_id"], row["key"])] = (row["value"], rec.get("source", stage))
    return out


def _check_one_source(path: Path, table: pa.Table, stored: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Add the file's values to `stored`; an (utterance, key) another file gives is an error."""
    for row in table.to_pylist():
        key = (row["utterance_id"], row["key"])
        if key in stored:
            value, other = stored[key]
            same = "the same value" if value == row["value"] else "two values"
            raise ValueError(
                f"utterance {key[0]!r} has attribute {key[1]!r} in two files, with {same}: {value!r} in {other} "
                f"and {row['value']!r} in {path}. Each attribute of an utterance must come from one file: remove "
                "it from one of them (nothing was written)"
            )
        stored[key] = (row["value"], str(path))


def _retire_old_names(wh: Warehouse, run: str, path: Path, stage: str) -> None:
    """Warehouses written before files were keyed by path named a commit by the file's base name
    (`metadata.utt2gender`): the same file's old commit is emptied, so its rows are not stored twice."""
    for (_, old_stage, shard), rec in wh.commits(run).items():
        if (keys.kind(old_stage) == keys.METADATA and old_stage != stage and rec.get("source") == str(path)
                and rec["files"]):
            wh.commit(run, old_stage, shard, [], source=str(path), superseded_by=stage)


@dataclass
class MetadataConfig:
    """The parameters of `metadata`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str
    files: list[str] = field(metadata={
        "positional": True, "help": "files with an utterance_id (or speaker) column, Kaldi utt2<key>/spk2<key> "
                                    "files, or VCTK's speaker-info.txt"})
    warehouse: str = "storage"


@dataclass
class MetadataResult:
    run: str
    counts: dict[str, int]

    def summary(self) -> str:
        c = self.counts
        return (f"metadata {self.run}: {c['rows']} attribute values from {c['files']} file(s); "
                f"{c['unknown_ids']} rows for utterances the run does not have were left out")


def run(cfg: MetadataConfig) -> MetadataResult:
    return MetadataResult(cfg.run, attach_metadata(cfg.run, cfg.files, cfg.warehouse))
