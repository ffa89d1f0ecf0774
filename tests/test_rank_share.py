"""Under torchrun each rank reads only its share: the audio of its own Parquet row groups and its own
files, never the whole stream (issue 12, part 4). Shards keep their numbers whatever the world size."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.corpus.alignments
import pipeline.corpus.audio
import pipeline.corpus.sources
from pipeline.corpus.sources import SourceSpec, iter_items
from pipeline.stages.ingest import count_items, ingest, iter_shards, prepare_shard, shard_owner
from pipeline.testing import audio_bytes, make_bad_timit, make_timit, tone
from pipeline.warehouse import Warehouse

FILE_ROWS = (5, 4, 5)  # three files: no world size of 2 or 4 divides them
ROW_GROUP_ROWS = 2


def _parquet_folder(root: Path) -> Path:
    """Three Hub-style Parquet files of 5, 4 and 5 rows, in row groups of 2 rows."""
    row = 0
    for f, n in enumerate(FILE_ROWS):
        rows = []
        for _ in range(n):
            rows.append({"id": f"utt{row:03d}", "text": f"sentence {row}", "speaker_id": f"spk{row % 3}",
                         "audio": {"bytes": audio_bytes(tone(4000 + 400 * row, 150 + 10 * row), fmt="FLAC"),
                                   "path": f"utt{row:03d}.flac"}})
            row += 1
        root.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / f"part{f}.parquet", row_group_size=ROW_GROUP_ROWS)
    return root


def _row_groups() -> list[tuple[int, range]]:
    """(file, rows of the stream) of every row group, in stream order."""
    out, start = [], 0
    for f, n in enumerate(FILE_ROWS):
        for lo in range(0, n, ROW_GROUP_ROWS):
            out.append((f, range(start + lo, start + min(lo + ROW_GROUP_ROWS, n))))
        start += n
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_a_rank_reads_the_audio_of_its_own_row_groups_only(tmp_path, monkeypatch, world_size):
    corpus = _parquet_folder(tmp_path / "hf")
    spec, shard_size = SourceSpec("hf", str(corpus)), 2
    n = sum(FILE_ROWS)
    assert count_items(spec) == n
    owner = shard_owner(n, shard_size, world_size)
    total_read = 0
    for rank in range(world_size):
        reads: list[tuple[str, int]] = []
        real = pipeline.corpus.sources.read_audio_row_group
        monkeypatch.setattr(pipeline.corpus.sources, "read_audio_row_group",
                            lambda pf, g, c, reads=reads, real=real: reads.append((pf, g)) or real(pf, g, c))
        rows = []
        for shard, items in iter_shards(spec, shard_size, rank, world_size):
            assert owner(shard) == rank
            good, bad = prepare_shard(items, "ingest")
            assert not bad
            rows += [it.index for it in items]
        monkeypatch.undo()
        mine = set(rows)
        assert mine == {i for i in range(n) if owner(i // shard_size) == rank}
        needed = [(f, g) for f, g in _row_groups() if mine & set(g)]
        # one read per row group holding this rank's rows, none of the others'
        assert len(reads) == len(needed), (rank, reads, needed)
        read_rows = sorted(i for pf, g in reads for i in _rows_of(pf, g))
        assert set(read_rows) == {i for _, g in needed for i in g}
        total_read += len(read_rows)
    # all ranks together: the corpus once, plus at most one shared row group per rank boundary
    assert n <= total_read <= n + (world_size - 1) * ROW_GROUP_ROWS


def _rows_of(parquet_file, row_group: int) -> list[int]:
    ids = parquet_file.read_row_group(row_group, columns=["id"]).column("id").to_pylist()
    return [int(i[3:]) for i in ids]


def test_ranks_of_any_world_size_write_what_one_rank_writes(tmp_path):
    """Same rows with 1 and 3 ranks; a run begun with 3 ranks resumes with 2 (shards keep their numbers)."""
    corpus, wh = _parquet_folder(tmp_path / "hf"), tmp_path / "wh"
    spec = SourceSpec("hf", str(corpus))
    ingest(spec, "one", str(wh), shard_size=2)
    for rank in range(3):
        ingest(spec, "three", str(wh), shard_size=2, rank=rank, world_size=3)
    ingest(spec, "mixed", str(wh), shard_size=2, rank=1, world_size=3)  # a third of the run ...
    counts = [ingest(spec, "mixed", str(wh), shard_size=2, rank=r, world_size=2) for r in range(2)]  # ... resumed
    assert sum(c["shards"] for c in counts) == 7 - len([s for s in range(7) if shard_owner(14, 2, 3)(s) == 1])
    con = Warehouse(wh).connect()
    cols = "utterance_id, speaker, n_samples, text"
    one = con.sql(f"select {cols} from utterances where run = 'one' order by all").fetchall()
    assert len(one) == sum(FILE_ROWS)
    for run in ("three", "mixed"):
        assert con.sql(f"select {cols} from utterances where run = '{run}' order by all").fetchall() == one


def test_folder_ranks_open_only_their_own_files(tmp_path, monkeypatch):
    """TIMIT layout, 3 ranks: a rank stats and opens (audio, .PHN, .WRD, .TXT) only its own utterances' files."""
    corpus = make_bad_timit(make_timit(tmp_path / "timit"))
    spec, shard_size, world_size = SourceSpec("timit", str(corpus)), 3, 3
    every = [it.utterance_id for it in iter_items(spec)]
    seen: dict[int, set[str]] = {}
    for rank in range(world_size):
        opened: set[str] = set()

        def record(path, real, opened=opened):
            opened.add(Path(path).relative_to(corpus).with_suffix("").as_posix())
            return real(path)

        for module in (pipeline.corpus.audio, pipeline.corpus.alignments):
            monkeypatch.setattr(module, "regular_file", lambda p, r=module.regular_file: record(p, r))
        ids = set()
        for _, items in iter_shards(spec, shard_size, rank, world_size):
            prepare_shard(items, "ingest")
            ids |= {it.utterance_id for it in items}
        monkeypatch.undo()
        assert opened and opened <= ids, sorted(opened - ids)
        seen[rank] = ids
    assert sorted(set().union(*seen.values())) == sorted(every)
    assert sum(len(v) for v in seen.values()) == len(every)


def test_parquet_rows_come_in_the_order_datasets_streams_them(tmp_path):
    """Shards keep their numbers across this change: the row-group reader lists the rows (ids, text,
    speaker, metadata) that `datasets` streaming gave, in its order, split after split."""
    import datasets

    corpus = _parquet_folder(tmp_path / "hf")
    (corpus / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: dev\n"
                                      "    path: part2.parquet\n  - split: train\n    path: part[01].parquet\n---\n")
    ours = [(it.split, it.utterance_id, it.text, it.speaker) for it in iter_items(SourceSpec("hf", str(corpus)))]
    theirs = [(name, row["id"], row["text"], row["speaker_id"])
              for name, stream in datasets.load_dataset(str(corpus), streaming=True).items()
              for row in stream.decode(False)]
    assert ours == theirs and [s for s, *_ in ours][:5] == ["dev"] * 5
