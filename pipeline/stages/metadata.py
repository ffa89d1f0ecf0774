"""Utterance attributes from a file: speaker, gender, age, dialect… for colouring and `--by`.

Corpora carry some metadata themselves (TIMIT's path, a Hub dataset's columns; they land in
`utterances.metadata`). Others keep it beside the audio: the original study read Kaldi
`utt2spk`-style files. `attach_metadata` adds such a file's columns to a run as the table
`utterance_attributes(run, utterance_id, key, value)`; `analyze --by KEY`, the balanced sample's
group column and the report's metadata colouring read it before `utterances.metadata`.

Formats: CSV, TSV or Parquet with an `utterance_id` column (every other column is an attribute),
or a Kaldi two-column file named `utt2<key>` (`utt2gender`: "<utterance_id> <value>" per line).
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


def read_attributes(path: str | Path) -> pa.Table:
    """One attribute file → rows (utterance_id, key, value), values as strings."""
    path = Path(path)
    kaldi = KALDI_NAME.match(path.name)
    if kaldi:
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<utterance_id> <value>', got {line!r}")
            rows.append({"utterance_id": parts[0], "key": kaldi.group(1), "value": parts[1].strip()})
        return pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    elif path.suffix in (".csv", ".tsv"):
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"{path}: not a .csv, .tsv, .parquet or Kaldi utt2<key> file")
    if "utterance_id" not in table.column_names:
        raise ValueError(f"{path}: no utterance_id column (columns: {', '.join(table.column_names)})")
    ids = table.column("utterance_id").cast(pa.string())
    parts = [pa.table({"utterance_id": ids, "key": pa.array([name] * table.num_rows, pa.string()),
                       "value": table.column(name).cast(pa.string())}, schema=ATTRIBUTES_SCHEMA)
             for name in table.column_names if name != "utterance_id"]
    return pa.concat_tables(parts) if parts else ATTRIBUTES_SCHEMA.empty_table()


def attach_metadata(run: str, files: list[str], warehouse: str = "storage") -> dict[str, int]:
    """Add the attributes of `files` to `run` (table utterance_attributes). Returns counts:
    `rows` stored, `unknown_ids` (rows for utterances the run lacks, left out), `files`."""
    wh = Warehouse(warehouse)
    with wh.lock(run):
        con = wh.connect()
        known = {u for (u,) in con.execute("select utterance_id from utterances where run = ?", [run]).fetchall()}
        if not known:
            raise ValueError(f"run {run!r} has no utterances in {wh.root}: extract (or ingest) it first")
        paths = sorted({Path(f).resolve() for f in files})
        tables = {path: _known_rows(path, known) for path in paths}
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


def _known_rows(path: Path, known: set[str]) -> tuple[pa.Table, int]:
    """The file's rows with a value for utterances of the run, and how many rows named other ids."""
    table = read_attributes(path).filter(pa.compute.is_valid(pa.compute.field("value")))
    seen: set[tuple[str, str]] = set()
    for key in zip(table.column("utterance_id").to_pylist(), table.column("key").to_pylist()):
        if key in seen:
            raise ValueError(f"{path}: utterance {key[0]!r} has attribute {key[1]!r} twice")
        seen.add(key)
    mask = pa.array([u in known for u in table.column("utterance_id").to_pylist()], pa.bool_())
    kept = table.filter(mask)
    return kept, table.num_rows - kept.num_rows


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
            for row in pq.read_table(wh.root / f["path"], columns=["utterance_id", "key", "value"]).to_pylist():
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
        "positional": True, "help": "files with an utterance_id column, or Kaldi utt2<key> files"})
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
