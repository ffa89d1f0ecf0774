"""Stage 2: corpus → model → `frames` (one row per run, layer, utterance, frame) + corpus tables.

Per rank: stream this rank's shards (`ingest.shard_owner`: a contiguous run of shards per rank),
decode them in a background thread, run the model in length-bucketed batches, and hand each finished shard to a writer
thread, which writes one file per layer (several layers at once on a GPU machine) plus the
corpus tables and then commits the shard. On CPU, glibc keeps the freed heap for the next batch.
A shard is visible only after its commit, so a process killed at any point leaves either a
committed shard or nothing that readers trust; a rerun skips committed shards and redoes the rest.
An utterance longer than one model window (30 s) is streamed: each window's frames go straight
to the shard's per-layer Parquet writers, so memory does not grow with the recording's length.
Beside the model's layers, the log-mel layer -2 (`mel`: 80 log-mel bins per model frame, from exactly
the samples the frame sees; pipeline/algorithms/logmel.py) is stored like a layer when `--layers`
names it (`mel` or -2, e.g. `--layers -1,6,mel`) and in `--layers all`. It is the acoustic
target of analyze's `cca_mel`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.warehouse import keys, schemas, vectors
from pipeline.algorithms.geometry import FrameGeometry, labels_at
from pipeline.algorithms.logmel import MEL_LAYER, N_MELS, log_mel_frames

from pipeline.model.batching import DEFAULT_MAX_BATCH_SAMPLES, max_batch_size_for
from pipeline.stages.ingest import (
    CORPUS_HELP,
    ID_COLUMN_HELP,
    OVERWRITE_HELP,
    SHARD_SIZE,
    ALIGNMENTS_HELP,
    SOURCE_FORMATS,
    Prepared,
    QuarantineRow,
    committed_ids,
    corpus_fingerprint,
    ensure_run_facts,
    iter_shards,
    prepare_shard,
    shard_owner,
    count_items,
    source_spec,
    write_corpus_tables,
)
from pipeline.warehouse import FileRecord, Warehouse, fingerprint

log = logging.getLogger(__name__)

# a streamed recording buffers at most one row group per layer: 4 MiB keeps that far below the recording's
# own samples (32 MiB per layer grew with the recording up to ~200 MB on a 1-hour one)
STREAM_ROW_GROUP_BYTES = 4 * 1024 * 1024
MAX_BATCH_SAMPLES = DEFAULT_MAX_BATCH_SAMPLES  # padded audio per forward pass (pipeline/model/batching.py)


@dataclass
class ExtractConfig:
    """The parameters of `extract`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str = field(metadata={"help": "name of the run (a folder-safe word)"})
    model: str = field(default="default", metadata={"help": "hub id or local folder; 'default' = the embedded model"})
    format: str = field(default="embedded", metadata={"choices": SOURCE_FORMATS})
    corpus: str | None = field(default=None, metadata={"help": CORPUS_HELP})
    split: str | None = field(default=None, metadata={"help": "one split only (default: every split)"})
    id_column: str = field(default="id", metadata={"help": ID_COLUMN_HELP})
    limit: int | None = field(default=None, metadata={"help": "only the first N items of the stream"})
    alignments: str | None = field(default=None, metadata={"help": ALIGNMENTS_HELP})
    layers: str = field(default="all", metadata={
        "help": "'all', or e.g. '-1,0,6-12,mel' (-1 = CNN output, 0 = transformer input, mel or -2 = 80 log-mel "
                "bins per frame; 'all' holds every layer and mel)"})
    warehouse: str = "storage"
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    dtype: str = field(default="float16", metadata={"choices": ("float16", "float32"), "help": "stored vectors"})
    precision: str = field(default="auto", metadata={
        "choices": ("auto", "float32", "float16", "bfloat16"),
        "help": "compute precision (auto: float32 on CPU, bfloat16 autocast on CUDA)"})
    shard_size: int = SHARD_SIZE
    max_batch_samples: int = field(default=MAX_BATCH_SAMPLES, metadata={
        "help": "padded audio samples per forward pass (default: 160 s)"})
    max_batch_size: int | None = field(default=None, metadata={
        "help": "utterances per forward pass (default: 8 on CPU, where a batch's activations should stay in the "
                "caches; 32 on CUDA)"})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    progress: bool = field(default=True, metadata={"flag": "--no-progress"})


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


def split_layers(spec: str, num_layers: int) -> tuple[list[int], bool]:
    """(the model's layers, whether the log-mel layer is stored) of `--layers`: the log-mel layer is named
    `mel` or -2, and 'all' holds it (80 values a frame: ~1 % of wav2vec2-base's 13 layers; a run begun before
    that resumes without it, `_resume_layers`). The model's layers are `pipeline.model.parse_layers`'."""
    from pipeline.model import parse_layers

    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    is_mel = [p.lower() in ("mel", str(MEL_LAYER)) for p in parts]
    rest = [p for p, m in zip(parts, is_mel) if not m]
    if not rest:
        raise ValueError(f"--layers {spec!r} names no layer of the model: the frames are the model's, so name one "
                         "too, e.g. --layers -1,mel")
    return parse_layers(",".join(rest), num_layers), any(is_mel) or any(p.lower() == "all" for p in rest)


def _resume_layers(wh, cfg: ExtractConfig, layers: list[int], mel: bool) -> bool:
    """Whether to store the log-mel layer: as `--layers` says, except that a run made with `all` before `all`
    held the log-mel layer (its facts list exactly the model's layers) resumes as it was made."""
    if not mel or cfg.overwrite or any(p.strip().lower() in ("mel", str(MEL_LAYER)) for p in str(cfg.layers).split(",")):
        return mel
    old = wh.read_facts(cfg.run) or {}
    if sorted(old.get("layers") or []) == sorted(layers):
        log.info("run %r was made without the log-mel layer (-2): it resumes without it", cfg.run)
        return False
    return mel


def add_mel(outputs: dict[int, np.ndarray], wave: np.ndarray, geometry: FrameGeometry, first_frame: int = 0) -> dict:
    """`outputs` (one utterance's or window's blocks, by layer) with the log-mel layer of the same frames:
    frame i from samples [hop · i, hop · i + window) of the whole recording."""
    n = next(iter(outputs.values())).shape[0]
    start = first_frame * geometry.hop_samples
    audio = wave[start:start + geometry.n_samples_for_frames(n)]
    outputs[MEL_LAYER] = log_mel_frames(audio, geometry.receptive_field_samples, geometry.hop_samples, n_frames=n,
                                        sample_rate_hz=geometry.sample_rate_hz)
    return outputs


def frame_labels(segments, tier: str, centres_s: np.ndarray) -> list[str | None]:
    """Label of the interval of `tier` holding each frame centre (geometry.labels_at: start inclusive, end exclusive)."""
    tier_segments = [s for s in segments if s.tier == tier]
    return labels_at(centres_s, [s.start_s for s in tier_segments], [s.end_s for s in tier_segments],
                     [s.label for s in tier_segments]).tolist()


def frames_tables(
    prepared: list[Prepared], outputs: list[dict[int, np.ndarray]], dims: dict[int, int], geometry: FrameGeometry,
    dtype: str, first_frames: list[int] | None = None,
) -> dict[int, pa.Table]:
    """One table per layer, rows sorted by utterance and frame. `first_frames`: the frame index of
    each output's first row (a window of a streamed utterance), else 0."""
    order = sorted(range(len(prepared)), key=lambda i: prepared[i].utterance.utterance_id)
    ids, frames, times, phones, words = [], [], [], [], []
    for i in order:
        n = next(iter(outputs[i].values())).shape[0]
        first = first_frames[i] if first_frames else 0
        index = np.arange(first, first + n, dtype=np.int32)
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
    n_rows = len(columns["frame"])
    tables = {}
    for layer, dim in dims.items():
        matrix = np.empty((n_rows, dim), np_dtype)  # each output converted once, straight into place
        row = 0
        for i in order:
            block = outputs[i][layer]
            matrix[row:row + len(block)] = block
            row += len(block)
        tables[layer] = pa.Table.from_arrays([*columns.values(), vectors.encode(matrix, dtype)],
                                             schema=schemas.frames_schema(dim, dtype))
    return tables


class ModelOutOfMemory(RuntimeError):
    """The model ran out of memory on an utterance even alone: its shard is not committed."""


def _is_out_of_memory(err: BaseException) -> bool:
    """A transient failure (it depends on what else is in memory), never a property of the utterance."""
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def run_model(loaded, prepared: list[Prepared], layers: list[int], cfg: ExtractConfig,
              shard: int | None = None) -> tuple[list[dict], list[int]]:
    """Model outputs for each prepared utterance (the exception where the model failed), bucketed by length.

    A failed batch is retried one utterance at a time. A deterministic error there is that
    utterance's `model_error`; out of memory is retried once more and then raises ModelOutOfMemory,
    so that the shard is not committed with a quarantine a rerun would never retry."""
    from pipeline.model import extract as model_extract, length_buckets

    outputs: list[dict | BaseException | None] = [None] * len(prepared)
    failed: list[int] = []
    lengths = [len(p.wave) for p in prepared]
    for bucket in length_buckets(lengths, cfg.max_batch_samples, cfg.max_batch_size):
        try:
            result = model_extract(loaded, [prepared[i].wave for i in bucket], layers)
            for i, r in zip(bucket, result):
                outputs[i] = r
        except Exception as err:  # retry one at a time so that one bad utterance does not take the batch
            log.warning("a batch of %d utterances failed (%s: %s); retrying them one at a time",
                        len(bucket), type(err).__name__, err)
            _free_memory()
            for i in bucket:
                outputs[i] = _run_alone(loaded, prepared[i], layers, cfg, shard)
                if isinstance(outputs[i], BaseException):
                    failed.append(i)
    return outputs, failed


def _run_alone(loaded, p: Prepared, layers: list[int], cfg: ExtractConfig, shard: int | None,
               attempts: int = 2) -> dict | BaseException:
    """One utterance's outputs, or its deterministic error; out of memory `attempts` times raises."""
    from pipeline.model import extract as model_extract

    for attempt in range(1, attempts + 1):
        try:
            return model_extract(loaded, [p.wave], layers)[0]
        except Exception as err:  # noqa: BLE001 - recorded in quarantine unless transient
            if not _is_out_of_memory(err):
                return err
            _free_memory()
            if attempt == attempts:
                raise _out_of_memory_error(cfg, shard, p, err) from err


def _out_of_memory_error(cfg: ExtractConfig, shard: int | None, p: Prepared, err: BaseException,
                         streamed: bool = False) -> ModelOutOfMemory:
    what_to_do = ("it runs one window of 30 s at a time already: free memory on the device, or use --device cpu"
                  if streamed else f"lower --max-batch-samples (now {cfg.max_batch_samples}) or free memory on the "
                  "device first")
    return ModelOutOfMemory(
        f"run {cfg.run!r}, shard {shard}: the model ran out of memory on utterance {p.utterance.utterance_id!r} "
        f"({p.utterance.duration_s:.1f} s) even alone ({type(err).__name__}: {err}). The shard is not committed: "
        f"rerunning the same command redoes it; {what_to_do}."
    )


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _StreamFailed(Exception):
    """The model failed on utterance `index` of a streamed shard (`err`); its blocks are not kept."""

    def __init__(self, index: int, err: BaseException):
        super().__init__(f"utterance {index}: {err!r}")
        self.index, self.err = index, err


def _stream_frames(wh: Warehouse, cfg: ExtractConfig, shard: int, loaded, prepared: list[Prepared],
                   outputs: dict[int, dict], streamed: list[int], layers: list[int],
                   dims: dict[int, int]) -> tuple[list[FileRecord], dict[int, BaseException]]:
    """The frames files of a shard holding utterances longer than one window (`streamed`, indices
    into `prepared`); `outputs` holds the other utterances' outputs by index. Returns the files and
    the streamed utterances the model failed on (their `model_error`).

    Each window's block goes straight to per-layer writers in the stored dtype, in the rows'
    order (utterance, frame), so memory beyond the waveform is one normalised copy and a window.
    A failure leaves nothing written (the writers are aborted) and the shard is written again
    without that utterance; out of memory twice on one utterance raises ModelOutOfMemory."""
    failed: dict[int, BaseException] = {}
    out_of_memory: set[int] = set()
    while True:
        try:
            todo = [i for i in streamed if i not in failed]
            return _write_streamed(wh, cfg, shard, loaded, prepared, outputs, todo, layers, dims), failed
        except _StreamFailed as f:
            name = prepared[f.index].utterance.utterance_id
            _free_memory()
            if not _is_out_of_memory(f.err):
                log.warning("shard %d: the model failed on %s (%r); quarantined as model_error", shard, name, f.err)
                failed[f.index] = f.err
            elif f.index in out_of_memory:
                raise _out_of_memory_error(cfg, shard, prepared[f.index], f.err, streamed=True) from f.err
            else:
                log.warning("shard %d: out of memory on %s (%s); writing the shard again", shard, name, f.err)
                out_of_memory.add(f.index)


def _write_streamed(wh: Warehouse, cfg: ExtractConfig, shard: int, loaded, prepared: list[Prepared],
                    outputs: dict[int, dict], streamed: list[int], layers: list[int],
                    dims: dict[int, int]) -> list[FileRecord]:
    geometry = loaded.geometry
    order = sorted([*outputs, *streamed], key=lambda i: prepared[i].utterance.utterance_id)
    with contextlib.ExitStack() as stack:
        writers = {layer: stack.enter_context(wh.open_writer("frames", cfg.run, shard,
                                                             schemas.frames_schema(dim, cfg.dtype),
                                                             row_group_bytes=STREAM_ROW_GROUP_BYTES, layer=layer))
                   for layer, dim in dims.items()}

        def write(items: list[Prepared], blocks: list[dict], first_frames: list[int] | None = None) -> None:
            for layer, table in frames_tables(items, blocks, dims, geometry, cfg.dtype, first_frames).items():
                writers[layer].write(table)

        batched: list[int] = []  # consecutive utterances with outputs in memory: one table
        for i in order:
            if i in outputs:
                batched.append(i)
                continue
            if batched:
                write([prepared[j] for j in batched], [outputs[j] for j in batched])
                batched = []
            for first, block in _model_blocks(loaded, prepared[i], layers, i):
                if MEL_LAYER in dims:
                    add_mel(block, prepared[i].wave, geometry, first)
                write([prepared[i]], [block], [first])
        if batched:
            write([prepared[j] for j in batched], [outputs[j] for j in batched])
        return [writers[layer].close() for layer in dims]


def _model_blocks(loaded, p: Prepared, layers: list[int], index: int) -> Iterator[tuple[int, dict]]:
    """`model.extract_windows`, its errors (not the caller's) as _StreamFailed."""
    from pipeline.model import extract_windows

    try:
        blocks = iter(extract_windows(loaded, p.wave, layers))
    except Exception as err:  # noqa: BLE001 - the caller decides: quarantine, retry or raise
        raise _StreamFailed(index, err) from err
    while True:
        try:
            block = next(blocks, None)
        except Exception as err:  # noqa: BLE001
            raise _StreamFailed(index, err) from err
        if block is None:
            return
        yield block
        block = None
        _release_free_heap()


def _release_free_heap() -> None:
    """Hand the C heap's free memory back to the system between two windows. glibc keeps what a
    window's forward pass freed (its mmap threshold rises to the largest tensor freed, up to 32 MB),
    and the next window's peak comes on top: ~110 MB more per window pass, measured with the default
    model (bench/long_recording.py). malloc_trim is glibc's; elsewhere this does nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_KEEP_BYTES = 1 << 30


@functools.cache
def _keep_freed_heap() -> bool:
    """On CPU, let glibc reuse the forward pass's large buffers instead of mapping fresh pages each batch.

    By default every allocation above the mmap threshold (at most 32 MB) is a fresh mmap, and each
    of its pages faults and is zeroed on first touch: the first conv layer's output of a padded batch
    (0.5-1 GB at the default 160 s) cost 25.6 s of system time in 41.7 s of wall time on 960
    utterances (issue 12). Raised to 1 GiB (mmap and trim thresholds), those buffers come from the
    heap and stay there between batches: page faults fell 3.6-5x and system time 4-6x (bench/README.md).
    The peak resident memory is the same (the pages are the batch's own); the freed memory is
    kept for the next batch rather than handed back, except by _release_free_heap between the
    windows of a long recording. Once per process; glibc only (elsewhere nothing happens)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP_BYTES))


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the running process's symbols: glibc's, where it is glibc
    except (OSError, AttributeError):
        return None


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


def writer_threads(device_type: str, n_layers: int) -> int:
    """Threads writing one shard's per-layer files at once: 1 on CPU (the cores are the model's), and on
    a GPU up to half the cores, at most 8 and one per layer (pyarrow releases the GIL while encoding)."""
    if device_type == "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_layers, 8, cores // 2))


class _Writer:
    """Writes and commits finished shards in a background thread, in order; bounded queue. A shard's
    per-layer files are written by `threads` threads at once, then committed together."""

    def __init__(self, wh: Warehouse, run: str, rank: int, facts_sha: str, threads: int = 1):
        self.wh, self.run, self.rank, self.facts_sha = wh, run, rank, facts_sha
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="frames-writer") if threads > 1 else None
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
        if self.pool is not None:
            self.pool.shutdown()
        if self.error:
            raise self.error

    def _loop(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error:
                continue
            try:
                shard, ids, prepared, bad, tables, frame_files = job  # frames: tables to write, or files written
                files = write_corpus_tables(self.wh, self.run, shard, prepared, bad)
                write = lambda item: self.wh.write("frames", item[1], self.run, shard, layer=item[0])  # noqa: E731
                files += list(self.pool.map(write, tables.items()) if self.pool else map(write, tables.items()))
                files += frame_files
                self.wh.commit(self.run, keys.EXTRACT, shard, files, rank=self.rank, items=len(ids),
                               ids_sha256=fingerprint(ids), facts_sha256=self.facts_sha)
                self.bytes += sum(f.bytes for f in files)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err


def extract(cfg: ExtractConfig, rank: int | None = None, world_size: int | None = None) -> Counts:
    """Extract every chosen layer of every frame of a corpus into the warehouse (this rank's share)."""
    from pipeline.model import load_model

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
    loaded = load_model(cfg.model, device=device, dtype=precision, cache_dir=wh.cache_dir("_models"))
    if loaded.device.type == "cpu":
        _keep_freed_heap()
    if cfg.max_batch_size is None:
        cfg = dataclasses.replace(cfg, max_batch_size=max_batch_size_for(loaded.device.type))
    layers, mel = split_layers(cfg.layers, loaded.num_layers)  # the model's layers; mel: store the log-mel layer
    mel = _resume_layers(wh, cfg, layers, mel)
    spec = source_spec(cfg)
    facts = {
        **spec.facts(),
        "corpus_fingerprint": corpus_fingerprint(spec),
        "shard_size": cfg.shard_size,
        "model": loaded.facts(),
        "layers": sorted(layers + [MEL_LAYER] * mel),
        "dtype": cfg.dtype,
        "geometry": loaded.geometry.as_dict(),
    }
    _barrier_setup(world_size)
    if rank == 0:
        if cfg.overwrite:
            wh.drop_run(cfg.run)
        facts = ensure_run_facts(wh, cfg.run, facts)
    _barrier(world_size)
    facts = ensure_run_facts(wh, cfg.run, facts)
    committed = committed_ids(wh, cfg.run, keys.EXTRACT)
    done = frozenset(committed)
    owner = shard_owner(count_items(spec) if world_size > 1 else None, cfg.shard_size, world_size)
    counts = Counts(skipped_shards=sum(1 for s in done if owner(s) == rank))
    dims = {layer: loaded.layer_dim(layer) for layer in layers} | ({MEL_LAYER: N_MELS} if mel else {})
    writer = _Writer(wh, cfg.run, rank, fingerprint(facts), writer_threads(loaded.device.type, len(dims)))
    min_samples = loaded.geometry.receptive_field_samples

    def decoded():
        for shard, items in iter_shards(spec, cfg.shard_size, rank, world_size, done, verify=committed, run=cfg.run):
            yield shard, [it.utterance_id for it in items], *prepare_shard(items, keys.EXTRACT, min_samples)

    bar = _progress(cfg.progress and rank == 0, cfg.limit)
    try:
        for shard, ids, prepared, bad in _prefetch(decoded()):
            t0 = time.perf_counter()
            prepared, tables, frame_files = _shard_frames(wh, cfg, shard, loaded, prepared, bad, layers, dims)
            counts.model_s += time.perf_counter() - t0
            writer.put((shard, ids, prepared, bad, tables, frame_files))
            counts.shards += 1
            counts.utterances += len(prepared)
            counts.quarantined += len(bad)
            counts.frames += sum(t.num_rows for t in tables.values()) + sum(f.rows for f in frame_files)
            counts.audio_s += sum(p.utterance.duration_s for p in prepared)
            if bar is not None:
                bar.update(len(ids))
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"{counts.audio_s / 3600:.3f} h audio, {counts.audio_s / elapsed:.1f}× real time")
    except BaseException:
        with contextlib.suppress(BaseException):  # commit the shards finished before the error
            writer.close()
        raise
    writer.close()
    if bar is not None:
        bar.close()
    counts.bytes = writer.bytes
    counts.wall_s = time.perf_counter() - started
    return _gather(counts, world_size)


def run(cfg: ExtractConfig) -> Counts:
    """The stage's entry (`python -m pipeline extract`): this process's rank and world size from the environment."""
    return extract(cfg)


def _shard_frames(wh: Warehouse, cfg: ExtractConfig, shard: int, loaded, prepared: list[Prepared],
                  bad: list[QuarantineRow], layers: list[int], dims: dict[int, int],
                  ) -> tuple[list[Prepared], dict[int, pa.Table], list[FileRecord]]:
    """Run the model on one shard: (the utterances kept, frames tables to write, frames files written).

    Utterances that fit one window run batched and their tables are written by the writer thread;
    a shard with a longer one writes its frames here, streamed (`_stream_frames`). Model failures
    are appended to `bad` as `model_error`."""
    from pipeline.model import n_windows

    streamed = [i for i, p in enumerate(prepared) if n_windows(loaded, len(p.wave)) > 1]
    batched = sorted(set(range(len(prepared))) - set(streamed))
    results, failed_batched = run_model(loaded, [prepared[i] for i in batched], layers, cfg, shard)
    errors = {batched[j]: results[j] for j in failed_batched}
    outputs = {i: r for i, r in zip(batched, results) if i not in errors}
    if MEL_LAYER in dims:
        for i, r in outputs.items():
            add_mel(r, prepared[i].wave, loaded.geometry)
    tables: dict[int, pa.Table] = {}
    frame_files: list[FileRecord] = []
    if streamed:
        frame_files, stream_errors = _stream_frames(wh, cfg, shard, loaded, prepared, outputs, streamed, layers, dims)
        errors.update(stream_errors)
    for i, err in errors.items():
        bad.append(QuarantineRow(prepared[i].utterance.utterance_id, keys.EXTRACT, "model_error", repr(err)[:500]))
    kept = [i for i in range(len(prepared)) if i not in errors]
    if not streamed:
        tables = frames_tables([prepared[i] for i in kept], [outputs[i] for i in kept], dims, loaded.geometry,
                               cfg.dtype)
    return [prepared[i] for i in kept], tables, frame_files


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
