"""Stage 2: corpus → model → `frames` (one row per run, layer, utterance, frame) + corpus tables.

Per rank: stream this rank's shards (shard % world_size == rank), decode them in a background
thread, run the model in length-bucketed batches, and hand each finished shard to a writer
thread, which writes one file per layer plus the corpus tables and then commits the shard.
A shard is visible only after its commit, so a process killed at any point leaves either a
committed shard or nothing that readers trust; a rerun skips committed shards and redoes the rest.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.geometry import FrameGeometry
from pipeline.ingest import SHARD_SIZE, Prepared, QuarantineRow, iter_shards, prepare_shard, write_corpus_tables
from pipeline.sources import SourceSpec
from pipeline.warehouse import Warehouse, fingerprint

log = logging.getLogger(__name__)

MAX_BATCH_SAMPLES = 16_000 * 160  # padded audio per forward pass: 160 s, ~0.6 GB of activations for base on CPU


@dataclass
class ExtractConfig:
    """The parameters of `extract`; the CLI's flags are these names."""

    run: str
    model: str = "default"
    format: str = "embedded"
    corpus: str | None = None
    split: str | None = None
    id_column: str = "id"
    limit: int | None = None
    layers: str = "all"
    warehouse: str = "storage"
    device: str = "auto"
    dtype: str = "float16"  # stored vectors
    precision: str = "auto"  # compute: float32 on CPU, bfloat16 autocast on CUDA
    shard_size: int = SHARD_SIZE
    max_batch_samples: int = MAX_BATCH_SAMPLES
    max_batch_size: int = 32
    overwrite: bool = False
    progress: bool = True


@dataclass
class Counts:
    shards: int = 0
    skipped_shards: int = 0
    utterances: int = 0
    quarantined: int = 0
    frames: int = 0
    bytes: int = 0
    audio_s: float = 0.0
    model_s: float = 0.0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, other: "Counts") -> None:
        for name in ("shards", "skipped_shards", "utterances", "quarantined", "frames", "bytes", "audio_s", "model_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        rtf = self.audio_s / self.wall_s if self.wall_s else 0.0
        return (
            f"done: {self.utterances} utterances ({self.audio_s / 3600:.3f} h) in {self.shards} shards "
            f"({self.skipped_shards} already committed), {self.quarantined} quarantined, "
            f"{self.frames} frames × layers written, {self.bytes / 1e6:.1f} MB, "
            f"{self.wall_s:.1f} s ({rtf:.1f}× real time)"
        )


def frame_labels(segments, tier: str, centres_s: np.ndarray) -> list[str | None]:
    """Label of the interval of `tier` holding each frame centre: start inclusive, end exclusive."""
    tier_segments = sorted((s for s in segments if s.tier == tier), key=lambda s: s.start_s)
    if not tier_segments:
        return [None] * len(centres_s)
    starts = np.array([s.start_s for s in tier_segments])
    ends = np.array([s.end_s for s in tier_segments])
    labels = np.array([s.label for s in tier_segments], dtype=object)
    idx = np.searchsorted(starts, centres_s, side="right") - 1
    inside = (idx >= 0) & (centres_s < ends[np.clip(idx, 0, None)])
    out = np.where(inside, labels[np.clip(idx, 0, None)], None)
    return out.tolist()


def frames_tables(
    prepared: list[Prepared], outputs: list[dict[int, np.ndarray]], dims: dict[int, int], geometry: FrameGeometry,
    dtype: str,
) -> dict[int, pa.Table]:
    """One table per layer, rows sorted by utterance and frame."""
    order = sorted(range(len(prepared)), key=lambda i: prepared[i].utterance.utterance_id)
    ids, frames, times, phones, words = [], [], [], [], []
    for i in order:
        n = next(iter(outputs[i].values())).shape[0]
        index = np.arange(n, dtype=np.int32)
        centres = geometry.frame_centres_s(index)
        ids.append(np.full(n, prepared[i].utterance.utterance_id, dtype=object))
        frames.append(index)
        times.append(centres.astype(np.float32))
        phones += frame_labels(prepared[i].segments, "phone", centres)
        words += frame_labels(prepared[i].segments, "word", centres)
    columns = {
        "utterance_id": pa.array(np.concatenate(ids) if ids else [], pa.string()),
        "frame": pa.array(np.concatenate(frames) if frames else [], pa.int32()),
        "time_s": pa.array(np.concatenate(times) if times else [], pa.float32()),
        "phone": pa.array(phones, pa.string()),
        "word": pa.array(words, pa.string()),
    }
    np_dtype = np.float16 if dtype == "float16" else np.float32
    tables = {}
    for layer, dim in dims.items():
        flat = np.concatenate([outputs[i][layer] for i in order]).astype(np_dtype, copy=False) if order else np.zeros((0, dim), np_dtype)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
        tables[layer] = pa.Table.from_arrays([*columns.values(), vector], schema=schemas.frames_schema(dim, dtype))
    return tables


def run_model(loaded, prepared: list[Prepared], layers: list[int], cfg: ExtractConfig) -> tuple[list[dict], list[int]]:
    """Model outputs for each prepared utterance (None where the model failed), bucketed by length."""
    from pipeline.model import extract as model_extract, length_buckets

    outputs: list[dict | None] = [None] * len(prepared)
    failed: list[int] = []
    lengths = [len(p.wave) for p in prepared]
    for bucket in length_buckets(lengths, cfg.max_batch_samples, cfg.max_batch_size):
        try:
            result = model_extract(loaded, [prepared[i].wave for i in bucket], layers)
            for i, r in zip(bucket, result):
                outputs[i] = r
        except Exception:  # retry one at a time so that one bad utterance does not take the batch
            log.exception("batch failed; retrying its %d utterances one at a time", len(bucket))
            for i in bucket:
                try:
                    outputs[i] = model_extract(loaded, [prepared[i].wave], layers)[0]
                except Exception as err:  # noqa: BLE001 - recorded in quarantine
                    outputs[i] = err
                    failed.append(i)
    return outputs, failed


def _prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a background thread (decoding overlaps the model); re-raise its errors."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


class _Writer:
    """Writes and commits finished shards in a background thread, in order; bounded queue."""

    def __init__(self, wh: Warehouse, run: str, rank: int, facts_sha: str):
        self.wh, self.run, self.rank, self.facts_sha = wh, run, rank, facts_sha
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.bytes = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def put(self, job) -> None:
        if self.error:
            raise self.error
        self.q.put(job)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error:
            raise self.error

    def _loop(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error:
                continue
            try:
                shard, ids, prepared, bad, tables = job
                files = write_corpus_tables(self.wh, self.run, shard, prepared, bad)
                files += [self.wh.write("frames", t, self.run, shard, layer=layer) for layer, t in tables.items()]
                self.wh.commit(self.run, "extract", shard, files, rank=self.rank, items=len(ids),
                               ids_sha256=fingerprint(ids), facts_sha256=self.facts_sha)
                self.bytes += sum(f.bytes for f in files)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err


def extract(cfg: ExtractConfig, rank: int | None = None, world_size: int | None = None) -> Counts:
    """Extract every chosen layer of every frame of a corpus into the warehouse (this rank's share)."""
    from pipeline.model import load_model, parse_layers

    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    started = time.perf_counter()
    wh = Warehouse(cfg.warehouse)
    device = cfg.device
    if device in ("auto", "cuda") and world_size > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if _cuda() else "cpu"
    precision = cfg.precision
    if precision == "auto":
        precision = "bfloat16" if str(device).startswith("cuda") or (device == "auto" and _cuda()) else "float32"
    loaded = load_model(cfg.model, device=device, dtype=precision, cache_dir=wh.root / "_models")
    layers = parse_layers(cfg.layers, loaded.num_layers)
    spec = SourceSpec(cfg.format, cfg.corpus, cfg.split, cfg.id_column, cfg.limit)
    facts = {
        **spec.facts(),
        "shard_size": cfg.shard_size,
        "model": loaded.facts(),
        "layers": layers,
        "dtype": cfg.dtype,
        "geometry": loaded.geometry.as_dict(),
    }
    _barrier_setup(world_size)
    if rank == 0:
        if cfg.overwrite:
            wh.drop_run(cfg.run)
        facts = wh.ensure_facts(cfg.run, facts)
    _barrier(world_size)
    facts = wh.ensure_facts(cfg.run, facts)
    done = frozenset(shard for (_, _, shard) in wh.commits(cfg.run, "extract"))
    counts = Counts(skipped_shards=sum(1 for s in done if s % world_size == rank))
    dims = {layer: loaded.layer_dim(layer) for layer in layers}
    writer = _Writer(wh, cfg.run, rank, fingerprint(facts))
    min_samples = loaded.geometry.receptive_field_samples

    def decoded():
        for shard, items in iter_shards(spec, cfg.shard_size, rank, world_size, done):
            yield shard, [it.utterance_id for it in items], *prepare_shard(items, "extract", min_samples)

    bar = _progress(cfg.progress and rank == 0, cfg.limit)
    for shard, ids, prepared, bad in _prefetch(decoded()):
        t0 = time.perf_counter()
        outputs, failed = run_model(loaded, prepared, layers, cfg)
        counts.model_s += time.perf_counter() - t0
        for i in failed:
            bad.append(QuarantineRow(prepared[i].utterance.utterance_id, "extract", "model_error", repr(outputs[i])[:500]))
        failed_set = set(failed)
        keep = [i for i in range(len(prepared)) if i not in failed_set]
        prepared, outputs = [prepared[i] for i in keep], [outputs[i] for i in keep]
        tables = frames_tables(prepared, outputs, dims, loaded.geometry, cfg.dtype)
        writer.put((shard, ids, prepared, bad, tables))
        counts.shards += 1
        counts.utterances += len(prepared)
        counts.quarantined += len(bad)
        counts.frames += sum(t.num_rows for t in tables.values())
        counts.audio_s += sum(p.utterance.duration_s for p in prepared)
        if bar is not None:
            bar.update(len(ids))
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{counts.audio_s / 3600:.3f} h audio, {counts.audio_s / elapsed:.1f}× real time")
    writer.close()
    if bar is not None:
        bar.close()
    counts.bytes = writer.bytes
    counts.wall_s = time.perf_counter() - started
    return _gather(counts, world_size)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="utt", desc="extract", dynamic_ncols=True)


def _barrier_setup(world_size: int) -> None:
    """torchrun: a process group for barriers and the final tally (gloo works on CPU and GPU)."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _gather(counts: Counts, world_size: int) -> Counts:
    if world_size <= 1:
        return counts
    import torch.distributed as dist

    everyone: list[Counts | None] = [None] * world_size
    dist.all_gather_object(everyone, counts)
    total = Counts(wall_s=max(c.wall_s for c in everyone))
    for c in everyone:
        total.add(c)
    return total
