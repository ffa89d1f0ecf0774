"""Utterance attributes from a file: speaker, gender, age, dialect… for colouring and `--by`.

Corpora carry some metadata themselves (TIMIT's path, a Hub dataset's columns; they land in
`utterances.metadata`). Others keep it beside the audio: the original study read Kaldi
`utt2spk`-style files. `attach_metadata` adds such a file's columns to a run as the table
`utterance_attributes(run, utterance_id, key, value)`; `analyze --by KEY`, the balanced sample's
group column and the report's metadata colouring read it before `utterances.metadata`.

Formats: CSV, TSV or Parquet with an `utterance_id` column (every other column is an attribute),
or a Kaldi two-column file named `utt2<key>` (`utt2gender`: "<utterance_id> <value>" per line).
Ids the run does not have are counted and reported, not written; an id listed twice for the same
key is an error naming it. A rerun with the same file name replaces its rows.

    python -m pipeline metadata --run R FILE [FILE …]
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.warehouse import Warehouse
from pipeline.schemas import UTTERANCE_ATTRIBUTES as ATTRIBUTES_SCHEMA

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
    """Add the attributes of `files` to `run` (table utterance_attributes). Returns counts."""
    wh = Warehouse(warehouse)
    con = wh.connect()
    known = {u for (u,) in con.execute("select utterance_id from utterances where run = ?", [run]).fetchall()}
    if not known:
        raise ValueError(f"run {run!r} has no utterances in {wh.root}: extract (or ingest) it first")
    counts = {"rows": 0, "unknown_ids": 0, "files": 0}
    for path in sorted(files):
        table = read_attributes(path).filter(pa.compute.is_valid(pa.compute.field("value")))
        keys = list(zip(table.column("utterance_id").to_pylist(), table.column("key").to_pylist()))
        seen: set[tuple[str, str]] = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"{path}: utterance {key[0]!r} has attribute {key[1]!r} twice")
            seen.add(key)
        mask = pa.array([u in known for u, _ in keys], pa.bool_())
        counts["unknown_ids"] += len(keys) - sum(mask.to_pylist())
        kept = table.filter(mask)
        stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).name)[:60]
        record = wh.write("utterance_attributes", kept, run, 0, file_prefix=f"attr_{stem}")
        wh.commit(run, f"metadata.{stem}", 0, [record], source=str(Path(path).resolve()))
        counts["rows"] += kept.num_rows
        counts["files"] += 1
    return counts
