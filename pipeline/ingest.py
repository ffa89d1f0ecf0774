"""Stage 1: corpus → utterances, segments and quarantine tables (no model needed).

The stream is cut into shards of `shard_size` consecutive items; shard s belongs to rank
s % world_size. Each shard is written and committed on its own, so a rerun skips committed
shards and redoes the rest, and an item is never written twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import groupby
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline import audio, schemas
from pipeline.alignments import clean_tier
from pipeline.records import Quarantine, Segment, Utterance
from pipeline.sources import SourceItem, SourceSpec, iter_items
from pipeline.warehouse import FileRecord, Warehouse, fingerprint

log = logging.getLogger(__name__)

SHARD_SIZE = 64  # utterances per shard: ~3 min of TIMIT audio, one commit each


@dataclass
class Prepared:
    """A decoded, checked utterance: ready for the tables and the model."""

    utterance: Utterance
    wave: np.ndarray  # float32, mono, 16 kHz
    segments: list[Segment]
    source_channels: int


@dataclass(frozen=True)
class QuarantineRow:
    utterance_id: str
    stage: str
    reason: str
    detail: str


def prepare(item: SourceItem, min_samples: int = audio.MIN_SAMPLES) -> Prepared:
    """Decode and check one item. Raises Quarantine; never returns partial data."""
    if item.error is not None:
        raise item.error
    wave, source_rate, channels = audio.decode(item.load_audio(), item.utterance_id)
    audio.check_length(len(wave), item.utterance_id, min_samples)
    utterance = Utterance(
        utterance_id=item.utterance_id,
        corpus=item.corpus,
        speaker=item.speaker,
        split=item.split,
        text=item.text,
        n_samples=len(wave),
        source_sample_rate_hz=source_rate,
        metadata=dict(item.metadata),
    )
    segments: list[Segment] = []
    if item.load_tiers is not None:
        for tier, intervals in sorted(item.load_tiers(source_rate).items()):
            if intervals is not None:
                segments += clean_tier(intervals, utterance.duration_s, tier, item.alignment_source, item.utterance_id)
    if utterance.text is None:
        words = [s.label for s in segments if s.tier == "word" and s.label != "sil"]
        utterance.text = " ".join(words) or None
    return Prepared(utterance, wave, segments, channels)


def iter_shards(
    spec: SourceSpec, shard_size: int, rank: int = 0, world_size: int = 1, skip: frozenset[int] = frozenset()
) -> Iterator[tuple[int, list[SourceItem]]]:
    """This rank's shards, in order, without the skipped ones. Other items are passed over unread."""
    for shard, items in groupby(iter_items(spec), key=lambda it: it.index // shard_size):
        if shard % world_size != rank or shard in skip:
            for _ in items:
                pass
            continue
        yield shard, list(items)


def prepare_shard(
    items: list[SourceItem], stage: str, min_samples: int = audio.MIN_SAMPLES
) -> tuple[list[Prepared], list[QuarantineRow]]:
    good, bad = [], []
    for item in items:
        try:
            good.append(prepare(item, min_samples))
        except Quarantine as q:
            bad.append(QuarantineRow(item.utterance_id, stage, q.reason, q.detail))
            log.info("quarantined %s: %s", item.utterance_id, q)
    return good, bad


def utterances_table(prepared: list[Prepared]) -> pa.Table:
    rows = [
        {
            "utterance_id": u.utterance_id,
            "corpus": u.corpus,
            "speaker": u.speaker,
            "split": u.split,
            "n_samples": u.n_samples,
            "sample_rate_hz": u.sample_rate_hz,
            "source_sample_rate_hz": u.source_sample_rate_hz,
            "source_channels": p.source_channels,
            "duration_s": u.duration_s,
            "text": u.text,
            "metadata": sorted(u.metadata.items()),
        }
        for p in prepared
        for u in [p.utterance]
    ]
    return pa.Table.from_pylist(rows, schema=schemas.UTTERANCES)


def segments_table(prepared: list[Prepared]) -> pa.Table:
    rows = [{"utterance_id": p.utterance.utterance_id, **s.__dict__} for p in prepared for s in p.segments]
    return pa.Table.from_pylist(rows, schema=schemas.SEGMENTS)


def quarantine_table(rows: list[QuarantineRow]) -> pa.Table:
    return pa.Table.from_pylist([r.__dict__ for r in rows], schema=schemas.QUARANTINE)


def write_corpus_tables(
    wh: Warehouse, run: str, shard: int, prepared: list[Prepared], bad: list[QuarantineRow]
) -> list[FileRecord]:
    return [
        wh.write("utterances", utterances_table(prepared), run, shard),
        wh.write("segments", segments_table(prepared), run, shard),
        wh.write("quarantine", quarantine_table(bad), run, shard),
    ]


def ingest(
    spec: SourceSpec,
    run: str,
    warehouse: str = "storage",
    shard_size: int = SHARD_SIZE,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Write utterances, segments and quarantine of a corpus into the warehouse. Returns counts."""
    wh = Warehouse(warehouse)
    if overwrite and rank == 0:
        wh.drop_run(run)
    facts = wh.ensure_facts(run, {**spec.facts(), "shard_size": shard_size})
    done = {shard for (_, _, shard) in wh.commits(run, "ingest")}
    counts = {"shards": 0, "utterances": 0, "quarantined": 0, "segments": 0, "skipped_shards": len(done)}
    for shard, items in iter_shards(spec, shard_size, rank, world_size, frozenset(done)):
        prepared, bad = prepare_shard(items, "ingest")
        files = write_corpus_tables(wh, run, shard, prepared, bad)
        ids = [it.utterance_id for it in items]
        wh.commit(run, "ingest", shard, files, rank=rank, items=len(items), ids_sha256=fingerprint(ids),
                  facts_sha256=fingerprint(facts))
        counts["shards"] += 1
        counts["utterances"] += len(prepared)
        counts["quarantined"] += len(bad)
        counts["segments"] += files[1].rows
    return counts
