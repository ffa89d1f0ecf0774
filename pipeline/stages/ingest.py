"""Stage 1: corpus → utterances, segments and quarantine tables (no model needed).

The stream is cut into shards of `shard_size` consecutive items; each rank takes one contiguous
run of shards (`shard_owner`), so that it reads only its own files and row groups. Each shard
is written and committed on its own, so a rerun skips committed shards and redoes the rest,
and an item is never written twice. A shard's number never depends on the world size, so a run
resumes under any world size. A rerun never mixes two corpora: the run's facts hold a fingerprint
of the corpus, and every committed shard it skips must still hold the same items (the ids hash of
its commit).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from itertools import count, groupby
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from pipeline.algorithms.phone_classes import SILENCE
from pipeline.corpus import audio
from pipeline.warehouse import keys, schemas
from pipeline.corpus.alignments import clean_tier
from pipeline.corpus.records import Quarantine, Segment, Utterance
from pipeline.corpus.sources import (EMBEDDED_DATA, SourceItem, SourceSpec, hub_offline, hub_snapshot,
                                     iter_items, parquet_row_counts)
from pipeline.warehouse import FactsMismatch, FileRecord, Warehouse, fingerprint

log = logging.getLogger(__name__)

SHARD_SIZE = 64  # utterances per shard: ~3 min of TIMIT audio, one commit each
# the corpus flags of `ingest` and `extract` (their configs' fields)
SOURCE_FORMATS = ("hf", "timit", "textgrid", "embedded")
CORPUS_HELP = "hub id, Parquet file/folder, or corpus folder (not for --format embedded)"
ID_COLUMN_HELP = "hf: column(s) keying utterances; 'a,b' joins values with '/'"
OVERWRITE_HELP = "drop the run's old files and facts first"
ALIGNMENTS_HELP = ("folder of TextGrids (MFA: words/phones tiers) or TIMIT .PHN/.WRD files, joined to utterances by "
                   "relative path or file name; replaces the corpus's own alignments")


@dataclass
class Prepared:
    """A decoded, checked utterance: ready for the tables and the model."""

    utterance: Utterance
    wave: np.ndarray  # float32, mono, 16 kHz
    segments: list[Segment]
    source_channels: int


class CorpusChanged(FactsMismatch):
    """The corpus is not the one a run was made from: resuming would mix items of two corpora."""


WHAT_TO_DO = "use --overwrite to redo the run from the start, or a new --run name"


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
        text=item.load_text() if item.load_text is not None else item.text,
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
        words = [s.label for s in segments if s.tier == "word" and s.label != SILENCE]
        utterance.text = " ".join(words) or None
    return Prepared(utterance, wave, segments, channels)


def count_items(spec: SourceSpec) -> int | None:
    """How many items the stream holds, known before reading any row: Parquet footers (`hf`,
    `embedded`), the folder listing (`timit`, `textgrid`; no file opened); None for a dataset that
    `datasets` streams (not Parquet)."""
    if spec.format in ("hf", "embedded"):
        corpus = str(EMBEDDED_DATA) if spec.format == "embedded" else spec.corpus
        n = parquet_row_counts(corpus, spec.split)
    else:
        n = sum(1 for _ in iter_items(spec))
    return n if n is None or spec.limit is None else min(n, spec.limit)


def shard_owner(n_items: int | None, shard_size: int, world_size: int) -> Callable[[int], int]:
    """shard → the rank that writes it. With the stream's length known, rank r takes the r-th of
    `world_size` contiguous, equal runs of shards, so that it reads the row groups of its own run
    only (round robin would make every rank touch nearly every row group); unknown: shard % world_size.
    A shard's number and content never depend on the world size, so any world size resumes any run."""
    if world_size <= 1:
        return lambda shard: 0
    if n_items is None:
        return lambda shard: shard % world_size
    n_shards = max(1, -(-n_items // shard_size))
    return lambda shard: min(shard, n_shards - 1) * world_size // n_shards


def iter_shards(
    spec: SourceSpec, shard_size: int, rank: int = 0, world_size: int = 1, skip: frozenset[int] = frozenset(),
    verify: Mapping[int, str] | None = None, run: str = "",
) -> Iterator[tuple[int, list[SourceItem]]]:
    """This rank's shards (`shard_owner`), in order, without the skipped ones. Other ranks' items are
    listed (ids, text, tiers) but their audio is never read; the stream stops after this rank's last shard.

    `verify` (shard → ids_sha256 of its commit, for committed shards of `run`, all in `skip`): each of those
    shards must still list the same utterance ids, and the stream must still reach it; otherwise
    CorpusChanged, raised before this rank yields a shard (a committed shard that comes after one
    this rank redoes is checked in a first pass over the ids), so nothing is ever mixed."""
    verify = {shard: sha for shard, sha in (verify or {}).items() if sha}
    n_items = count_items(spec) if world_size > 1 else None
    owner = shard_owner(n_items, shard_size, world_size)
    last = None if n_items is None else -(-n_items // shard_size) - 1  # the stream's last shard
    mine = (s for s in (count() if last is None else range(last + 1)) if owner(s) == rank and s not in skip)
    first_todo = next(mine, None)
    if first_todo is not None and any(shard > first_todo for shard in verify):
        log.info("run %r: checking the ids of %d committed shards before redoing shard %d", run, len(verify),
                 first_todo)
        last_committed = max(verify)
        for shard, items in groupby(iter_items(spec), key=lambda it: it.index // shard_size):
            if shard > last_committed:  # (`_verify_shard` empties `verify` as it goes)
                break
            _verify_shard(run, shard, items, verify)
        _verify_reached(run, verify)
        verify = {}
    my_last = None if last is None else max((s for s in range(last + 1) if owner(s) == rank), default=-1)
    for shard, items in groupby(iter_items(spec), key=lambda it: it.index // shard_size):
        if my_last is not None and shard > my_last and shard > max(verify, default=-1):
            break  # the rest belongs to later ranks and holds nothing to verify
        if shard in verify:
            _verify_shard(run, shard, items, verify)
            continue
        if owner(shard) != rank or shard in skip:
            for _ in items:
                pass
            continue
        yield shard, list(items)
    _verify_reached(run, verify)


def _verify_shard(run: str, shard: int, items: Iterator[SourceItem], verify: dict[int, str]) -> None:
    """Compare a committed shard's ids (no audio read) with its commit's; drop it from `verify`."""
    ids = [it.utterance_id for it in items]
    if shard in verify and fingerprint(ids) != verify.pop(shard):
        raise CorpusChanged(
            f"run {run!r}: committed shard {shard} held other utterances than the corpus lists there now "
            f"({len(ids)} now, from {ids[0]!r} to {ids[-1]!r}): the corpus changed since the run was made "
            f"and resuming would mix two corpora; {WHAT_TO_DO}"
        )


def _verify_reached(run: str, verify: dict[int, str]) -> None:
    if verify:
        raise CorpusChanged(
            f"run {run!r}: committed shard(s) {sorted(verify)} lie past the end of the corpus now: the corpus "
            f"changed (it shrank) since the run was made, and the run holds utterances it no longer has; {WHAT_TO_DO}"
        )


def committed_ids(wh: Warehouse, run: str, stage: str) -> dict[int, str]:
    """shard → ids_sha256 of each committed shard of `stage` in `run` (what `iter_shards` verifies)."""
    return {shard: rec.get("ids_sha256") for (_, _, shard), rec in wh.commits(run, stage).items()}


# ---------------------------------------------------------------- the corpus a run was made from


def corpus_fingerprint(spec: SourceSpec) -> str | None:
    """What the corpus is now, recorded in the run's facts so that a rerun refuses a changed corpus.

    A folder or local file: sha256 of its files' relative paths, sizes and mtimes (dot-files left
    out, links to folders followed); the embedded corpus: sha256 of its data files' bytes; a Hub id:
    the dataset's commit sha, or None where the Hub cannot say (offline): then the per-shard ids
    check of `iter_shards` is the only guard."""
    own = _corpus_fingerprint(spec)
    if not spec.alignments:
        return own
    tree = Path(spec.alignments)
    listing = [[rel, st.st_size, st.st_mtime_ns] for rel, st in _walk_files(tree)] if tree.exists() else None
    return f"{own}+alignments:{fingerprint(listing)}" if own and listing is not None else None


def _corpus_fingerprint(spec: SourceSpec) -> str | None:
    if spec.format == "embedded":
        digest = hashlib.sha256()
        for path in sorted(EMBEDDED_DATA.glob("*.parquet")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return "sha256:" + digest.hexdigest()
    if not spec.corpus:
        return None
    local = Path(spec.corpus)
    if local.exists():
        listing = [[rel, st.st_size, st.st_mtime_ns] for rel, st in _walk_files(local)]
        return "files-sha256:" + fingerprint(listing)
    if spec.format != "hf":
        return None  # a folder that does not exist: the reader says so
    if hub_offline():
        snapshot = hub_snapshot(spec.corpus)  # the cached snapshot's folder is named by its commit sha
        return "hub:" + Path(snapshot).name if snapshot else None
    try:
        from huggingface_hub import HfApi

        return "hub:" + HfApi().dataset_info(spec.corpus, timeout=30).sha
    except Exception as err:  # noqa: BLE001 - offline, gated, or not a Hub id: the ids check remains
        log.warning("cannot read the Hub revision of %r (%s); a resume is checked by each shard's ids only",
                     spec.corpus, err)
        return None


def _walk_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every regular file under `root` (or `root` itself), sorted by relative path; each folder once."""
    if root.is_file():
        return [(root.name, root.stat())]
    out, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder, name)
            if not name.startswith(".") and path.is_file():
                out.append((path.relative_to(root).as_posix(), path.stat()))
    return sorted(out)


def corpus_changed(then: str | None, now: str | None) -> bool:
    """Two corpus fingerprints differ: a fingerprint unknown then or now (a Hub id offline) is not a change."""
    return then is not None and now is not None and then != now


def ensure_run_facts(wh: Warehouse, run: str, facts: dict) -> dict:
    """`wh.ensure_facts`, with a message that says so when the corpus is what changed. A fingerprint
    unknown now or then (a Hub id offline) is not a change: the run keeps the one it recorded."""
    old = wh.read_facts(run) or {}
    then, now = old.get("corpus_fingerprint"), facts.get("corpus_fingerprint")
    if "corpus_fingerprint" in old and then != now:
        if not corpus_changed(then, now):
            log.warning("run %r: the corpus fingerprint is unknown %s; a resume is checked by each shard's ids only",
                        run, "now" if now is None else "in the run's facts")
            facts = {**facts, "corpus_fingerprint": then}
        else:
            source = (facts.get("source") or {}).get("corpus") or "the embedded corpus"
            raise CorpusChanged(
                f"run {run!r} in {wh.root}: the corpus {source} changed since the run was made (corpus_fingerprint "
                f"{then!r} then, {now!r} now: files added, removed or modified); resuming would mix two corpora: "
                f"{WHAT_TO_DO}"
            )
    return wh.ensure_facts(run, facts)


def prepare_shard(
    items: list[SourceItem], stage: str, min_samples: int = audio.MIN_SAMPLES
) -> tuple[list[Prepared], list[QuarantineRow]]:
    """Prepared items and quarantine rows; any exception of one item is its quarantine row."""
    good, bad = [], []
    for item in items:
        try:
            good.append(prepare(item, min_samples))
        except Quarantine as q:
            bad.append(QuarantineRow(item.utterance_id, stage, q.reason, q.detail))
            log.info("quarantined %s: %s", item.utterance_id, q)
        except Exception as err:  # noqa: BLE001 - one bad item must not end the stream on every rerun
            detail = f"{type(err).__name__}: {err}"[:1000]
            bad.append(QuarantineRow(item.utterance_id, stage, "prepare_error", detail))
            log.warning("quarantined %s (prepare_error): %s", item.utterance_id, detail, exc_info=True)
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
    facts = ensure_run_facts(wh, run, {**spec.facts(), "shard_size": shard_size,
                                       "corpus_fingerprint": corpus_fingerprint(spec)})
    done = committed_ids(wh, run, keys.INGEST)
    counts = {"shards": 0, "utterances": 0, "quarantined": 0, "segments": 0, "skipped_shards": len(done),
              "reasons": {}}
    for shard, items in iter_shards(spec, shard_size, rank, world_size, frozenset(done), verify=done, run=run):
        prepared, bad = prepare_shard(items, keys.INGEST)
        files = write_corpus_tables(wh, run, shard, prepared, bad)
        ids = [it.utterance_id for it in items]
        wh.commit(run, keys.INGEST, shard, files, rank=rank, items=len(items), ids_sha256=fingerprint(ids),
                  facts_sha256=fingerprint(facts))
        counts["shards"] += 1
        counts["utterances"] += len(prepared)
        counts["quarantined"] += len(bad)
        for row in bad:
            counts["reasons"][row.reason] = counts["reasons"].get(row.reason, 0) + 1
        counts["segments"] += files[1].rows
    return counts


@dataclass
class IngestConfig:
    """The parameters of `ingest`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str = field(metadata={"help": "name of the run (a folder-safe word)"})
    format: str = field(default="embedded", metadata={"choices": SOURCE_FORMATS})
    corpus: str | None = field(default=None, metadata={"help": CORPUS_HELP})
    split: str | None = field(default=None, metadata={"help": "one split only (default: every split)"})
    id_column: str = field(default="id", metadata={"help": ID_COLUMN_HELP})
    limit: int | None = field(default=None, metadata={"help": "only the first N items of the stream"})
    alignments: str | None = field(default=None, metadata={"help": ALIGNMENTS_HELP})
    warehouse: str = "storage"
    shard_size: int = field(default=SHARD_SIZE, metadata={"help": f"utterances per shard (default {SHARD_SIZE})"})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def spec(self) -> SourceSpec:
        return source_spec(self)


def source_spec(cfg) -> SourceSpec:
    """The corpus a stage's config names (its fields format, corpus, split, id_column, limit, alignments)."""
    return SourceSpec(cfg.format, cfg.corpus, cfg.split, cfg.id_column, cfg.limit, getattr(cfg, "alignments", None))


@dataclass
class IngestResult:
    run: str
    counts: dict

    def summary(self) -> str:
        c = self.counts
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(c.get("reasons", {}).items()))
        return (f"ingest {self.run}: {c['utterances']} utterances, {c['segments']} segments, "
                f"{c['quarantined']} quarantined{f' ({reasons})' if reasons else ''}, {c['shards']} shards written "
                f"({c['skipped_shards']} already committed)")


def run(cfg: IngestConfig) -> IngestResult:
    return IngestResult(cfg.run, ingest(cfg.spec(), cfg.run, cfg.warehouse, cfg.shard_size, cfg.overwrite))
