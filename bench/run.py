"""`python -m bench.run --out bench/results.json`: what the pipeline costs beyond the model, and what FAISS buys.

Each benchmark is a function registered in BENCHMARKS (`--only NAME` runs one, `--list` names them):

  extract_default  pipeline.stages.extract.extract end to end against the bare forward pass
                   (pipeline.model.extract over the same length buckets, waveforms already in memory),
                   embedded default model, every layer stored (as `make extract`)
  extract_base     the same for wav2vec2-base geometry (768-d, 12 layers; random weights, seed 0)
  memory           peak RSS of `python -m pipeline extract` on a corpus and on it ten times over
  long_recording   peak RSS of `python -m pipeline extract` on one silent recording of 1, 10 and 60 min
                   (bench/long_recording.py): growth per minute against the decoded float32 samples
  disk_bytes       bytes of the frames files per (frame x layer) against 2 D (float16 vectors)
  kmeans           pipeline.algorithms.kmeans.fit_kmeans (FAISS) against scikit-learn MiniBatchKMeans with
                   fairseq's HuBERT settings, same data; pipeline.algorithms.kmeans.assign throughput
  (slot)           reductions: t-SNE / UMAP timings go in the section marked "reductions" below

The machine is shared and noisy: the two sides of every ratio are measured in the same process,
interleaved, `repeats` times, and the median of the per-repeat ratios is reported. Results go to
--out as JSON with the machine facts; bench/README.md quotes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 16_000
# transformers/datasets: no network, no progress bars (also for the extraction subprocesses)
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}

# wav2vec2-base (facebook/wav2vec2-base): conv 512 x 7, group norm, 768-d, 12 layers; ~95M parameters
BASE_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   conv_dim=[512] * 7, feat_extract_norm="group", do_stable_layer_norm=False)
# fairseq examples/hubert/simple_kmeans/learn_kmeans.py, get_km_model()
FAIRSEQ_MINIBATCH = dict(init="k-means++", max_iter=100, batch_size=10000, tol=0.0, max_no_improvement=100,
                         n_init=20, reassignment_ratio=0.0, compute_labels=False, verbose=0)


@dataclass(frozen=True)
class ExtractCase:
    model: str  # "default" (embedded) or "base"
    utterances: int  # from the corpus (embedded: ~2.1 s each)
    shard_size: int
    layers: str


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench mode: full 4.5 min on 2 quiet cores (7.5 with busy neighbours), quick 1.7 min."""

    repeats: int
    extract: dict[str, ExtractCase]
    memory_utterances: int  # the small corpus; the large one is it ten times over
    memory_shard_size: int
    kmeans_points: int
    kmeans_dim: int
    kmeans_k: int
    assign_points: int
    disk_utterances: int  # one shard at the pipeline's default shard size (64)
    analyze_utterances: int  # analyze_memory: one shard (64 in full mode); the longer run is it ten times over
    reduce_points: int  # t-SNE / UMAP map size (the target names 50,000)
    long_recording_minutes: tuple[int, ...] = (1, 10, 60)  # one recording each; 60 min: ~3 min on 2 busy cores


PLANS = {
    # sklearn with fairseq's settings costs ~20 k-means++ seedings of min(n, 30,000) points: 225 s for
    # n = 50,000 and 86-381 s for n = 20,000 on these 2 cores (quiet / busy neighbours); n = 10,000
    # keeps the full run near 5 minutes on a quiet machine and under ~10 with busy neighbours
    "full": Plan(
        repeats=3,
        extract={"extract_default": ExtractCase("default", 56, 14, "all"),  # ~118 s of audio, 4 shards
                 "extract_base": ExtractCase("base", 48, 12, "all")},  # ~100 s of audio, 4 shards
        memory_utterances=6, memory_shard_size=2,  # 3 shards (~12 s); x10: 30 shards (~118 s)
        kmeans_points=10_000, kmeans_dim=768, kmeans_k=100, assign_points=200_000,
        disk_utterances=64, analyze_utterances=64, reduce_points=50_000),
    "quick": Plan(
        repeats=3,
        extract={"extract_default": ExtractCase("default", 8, 4, "all"),
                 "extract_base": ExtractCase("base", 3, 1, "all")},
        memory_utterances=3, memory_shard_size=1,
        kmeans_points=2_000, kmeans_dim=256, kmeans_k=100, assign_points=50_000,  # D of the default model
        disk_utterances=16, analyze_utterances=32, reduce_points=5_000, long_recording_minutes=(1, 10)),  # reported, not checked
}


@dataclass
class Context:
    plan: Plan
    tmp: Path  # scratch: corpora, warehouses, the base model
    corpus_kind: str  # "embedded" or "synthetic"

    @property
    def warehouse(self) -> Path:
        """One warehouse for every benchmark (one run name each): the default model is built once."""
        return self.tmp / "wh"

    def corpus(self, n_utterances: int, times: int = 1) -> tuple[Path, float]:
        """A Hub-style Parquet corpus of `n_utterances`, repeated `times` over (new ids); (path, audio s)."""
        path = self.tmp / f"corpus-{self.corpus_kind}-{n_utterances}x{times}.parquet"
        if not path.exists():
            rows = embedded_rows(n_utterances) if self.corpus_kind == "embedded" else synthetic_rows(n_utterances)
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(tile(rows, times), tmp)
            os.replace(tmp, path)
        return path, corpus_audio_s(path)

    def model_source(self, model: str) -> str:
        if model == "default":
            return "default"
        folder = self.tmp / "wav2vec2-base-random"
        if not (folder / "model.safetensors").exists():
            build_base_model(folder)
        return str(folder)


BENCHMARKS: dict[str, Callable[[Context], dict]] = {}


def benchmark(name: str):
    """Register `fn(ctx) -> result dict` under `name`: keys `summary` (lines), `checks`, and data."""
    def register(fn):
        BENCHMARKS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------- helpers


def timed(fn: Callable, *args, **kwargs) -> tuple[float, float, Any]:
    """(wall s, process CPU s over all threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def median(values) -> float:
    return float(statistics.median(values))


def check(what: str, value: float, op: str, target: float) -> dict:
    met = value >= target if op == ">=" else value <= target
    return {"what": what, "value": round(float(value), 4), "target": f"{op} {target}", "met": bool(met)}


def check_line(c: dict) -> str:
    return f"  {'MET    ' if c['met'] else 'NOT MET'} {c['what']}: {c['value']:g} (target {c['target']})"


# ---------------------------------------------------------------- corpora


def embedded_rows(n: int) -> pa.Table:
    """The first `n` rows of the embedded corpus (train split first), cycled when n is larger."""
    from pipeline.corpus.sources import EMBEDDED_DATA

    files = sorted(EMBEDDED_DATA.glob("*.parquet"), key=lambda p: (not p.name.startswith("train"), p.name))
    table = pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])
    return tile(table, -(-n // table.num_rows)).slice(0, n)


def tile(table: pa.Table, times: int) -> pa.Table:
    """`table` repeated `times` over; copy c > 0 gets ids `<id>~c<c>` (the stream must not repeat ids)."""
    if times == 1:
        return table
    copies = []
    for c in range(times):
        ids = table["id"] if c == 0 else pa.array([f"{i}~c{c}" for i in table["id"].to_pylist()])
        copies.append(table.set_column(table.schema.get_field_index("id"), "id", ids))
    return pa.concat_tables(copies)


def corpus_audio_s(path: Path) -> float:
    import soundfile as sf

    audio = pq.read_table(path, columns=["audio"])["audio"].to_pylist()
    return sum(sf.info(io.BytesIO(a["bytes"])).duration for a in audio)


# label: (kind, formant or noise band centres Hz). A small, TIMIT-like inventory.
SYNTH_PHONES = {"aa": ("vowel", (730, 1090, 2440)), "iy": ("vowel", (270, 2290, 3010)),
                "uw": ("vowel", (300, 870, 2240)), "eh": ("vowel", (530, 1840, 2480)),
                "ah": ("vowel", (520, 1190, 2390)), "m": ("nasal", (250, 1000, 2200)),
                "n": ("nasal", (250, 1500, 2500)), "s": ("fricative", (5500,)), "sh": ("fricative", (3000,)),
                "f": ("fricative", (4000,)), "t": ("stop", (4000,)), "k": ("stop", (2000,))}


def synthetic_rows(n: int, seed: int = 0) -> pa.Table:
    """Speech-like utterances of 2-6 s: harmonic vowels and nasals with formants and a pitch
    contour, band-noise fricatives, stop bursts, pauses; exact phone and word intervals in samples."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        speaker = i % 8
        wave, phones, words = _synthetic_utterance(rng, rng.uniform(2.0, 6.0), 90 + 15 * speaker)
        rows.append({
            "id": f"synth{speaker}/{i:05d}", "audio": {"bytes": _flac(wave), "path": f"{i:05d}.flac"},
            "text": " ".join(w[2] for w in words), "speaker_id": f"synth{speaker}",
            "phonetic_detail": {k: list(v) for k, v in zip(("start", "stop", "utterance"), zip(*phones))},
            "word_detail": {k: list(v) for k, v in zip(("start", "stop", "utterance"), zip(*words))},
        })
    return pa.Table.from_pylist(rows)


def _synthetic_utterance(rng, duration_s: float, f0_hz: float):
    labels = list(SYNTH_PHONES)
    pieces, phones, words = [_silence(rng, int(0.15 * RATE_HZ))], [], []
    phones.append((0, len(pieces[0]), "sil"))
    pos = len(pieces[0])
    while pos < (duration_s - 0.2) * RATE_HZ:
        start = pos
        for _ in range(rng.integers(2, 6)):
            label = labels[rng.integers(len(labels))]
            n = int(rng.uniform(0.05, 0.18) * RATE_HZ)
            pieces.append(_phone(rng, label, n, f0_hz * rng.uniform(0.85, 1.2)))
            phones.append((pos, pos + n, label))
            pos += n
        words.append((start, pos, f"w{rng.integers(500)}"))
        if rng.random() < 0.3:
            n = int(rng.uniform(0.05, 0.2) * RATE_HZ)
            pieces.append(_silence(rng, n))
            phones.append((pos, pos + n, "sil"))
            pos += n
    pieces.append(_silence(rng, int(0.15 * RATE_HZ)))
    phones.append((pos, pos + len(pieces[-1]), "sil"))
    wave = np.concatenate(pieces)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32), phones, words


def _phone(rng, label: str, n: int, f0_hz: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    kind, bands = SYNTH_PHONES[label]
    t = np.arange(n) / RATE_HZ
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * RATE_HZ))
    if kind in ("vowel", "nasal"):
        phase = 2 * np.pi * np.cumsum(f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / RATE_HZ
        harmonics = np.arange(1, int(4000 // f0_hz) + 1)
        gain = sum(np.exp(-((harmonics * f0_hz - f) / 120.0) ** 2) for f in bands) + 0.02
        wave = (gain[:, None] * np.sin(harmonics[:, None] * phase[None, :])).sum(0)
        wave *= 0.4 if kind == "nasal" else 1.0
    else:
        sos = butter(2, [bands[0] * 0.7, min(bands[0] * 1.3, 7900)], btype="band", fs=RATE_HZ, output="sos")
        wave = sosfilt(sos, rng.standard_normal(n)) * 3.0
        if kind == "stop":  # closure, then a 15 ms burst
            wave[: max(0, n - int(0.015 * RATE_HZ))] = 0.0
    return wave * ramp + 0.003 * rng.standard_normal(n)


def _silence(rng, n: int) -> np.ndarray:
    return 0.003 * rng.standard_normal(n)


def _flac(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, RATE_HZ, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------- models


def build_base_model(folder: Path) -> None:
    """wav2vec2-base geometry with random weights (torch seed 0), saved like a hub checkpoint."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Wav2Vec2Model(Wav2Vec2Config(**BASE_CONFIG))
    model.save_pretrained(tmp, safe_serialization=True)
    # facebook/wav2vec2-base's preprocessor_config: normalised input
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp)
    os.replace(tmp, folder)


def compute_settings() -> tuple[str, str]:
    """(device, precision) as extract() resolves "auto": bfloat16 autocast on CUDA, float32 on CPU."""
    import torch

    return ("auto", "bfloat16") if torch.cuda.is_available() else ("auto", "float32")


# ---------------------------------------------------------------- extraction overhead


def _extract_config(ctx: Context, name: str, case: ExtractCase):
    from pipeline.stages.extract import ExtractConfig

    corpus, _ = ctx.corpus(case.utterances)
    return ExtractConfig(run=name, model=ctx.model_source(case.model), format="hf", corpus=str(corpus),
                         layers=case.layers, warehouse=str(ctx.warehouse), shard_size=case.shard_size,
                         overwrite=True, progress=False)


def _decode_shards(cfg) -> list[tuple[int, list[str], list, list]]:
    """What the pipeline's decoder thread does: this corpus's shards, read and prepared."""
    from pipeline.stages.ingest import iter_shards, prepare_shard
    from pipeline.corpus.sources import SourceSpec

    spec = SourceSpec(cfg.format, cfg.corpus, cfg.split, cfg.id_column, cfg.limit)
    return [(shard, [it.utterance_id for it in items], *prepare_shard(items, "extract"))
            for shard, items in iter_shards(spec, cfg.shard_size)]


def _bare_forward(loaded, shards, layers: list[int], cfg) -> list[list[dict]]:
    """pipeline.model.extract over the buckets run_model forms: per shard, length_buckets(...)."""
    from pipeline.model import extract as forward, length_buckets

    out = []
    for _, _, prepared, _ in shards:
        outputs: list = [None] * len(prepared)
        for bucket in length_buckets([len(p.wave) for p in prepared], cfg.max_batch_samples, cfg.max_batch_size):
            for i, r in zip(bucket, forward(loaded, [prepared[i].wave for i in bucket], layers)):
                outputs[i] = r
        out.append(outputs)
    return out


def _write_shards(wh_root: Path, shards, tables_per_shard) -> None:
    """What the pipeline's writer thread does: corpus tables, one frames file per layer, a commit."""
    from pipeline.stages.ingest import write_corpus_tables
    from pipeline.warehouse import Warehouse, fingerprint

    wh = Warehouse(wh_root)
    for (shard, ids, prepared, bad), tables in zip(shards, tables_per_shard):
        files = write_corpus_tables(wh, "scratch", shard, prepared, bad)
        files += [wh.write("frames", t, "scratch", shard, layer=layer) for layer, t in tables.items()]
        wh.commit("scratch", "extract", shard, files, items=len(ids), ids_sha256=fingerprint(ids))


def _encode_frames(tables_per_shard) -> None:
    """Parquet encoding alone (Warehouse.write's settings, into memory): the CPU part of writing."""
    from pipeline.warehouse import ZSTD_LEVEL

    for tables in tables_per_shard:
        for table in tables.values():
            pq.write_table(table, io.BytesIO(), compression="zstd", compression_level=ZSTD_LEVEL,
                           row_group_size=64 * 1024, write_statistics=True)


def _one_repeat(ctx: Context, cfg, scratch: Path, pipeline_first: bool) -> dict:
    """The pipeline end to end, and the same work done serially in parts (bare forward among them);
    which of the two runs first alternates between repeats."""
    from pipeline.stages.extract import extract

    if pipeline_first:
        t_pipe, cpu_pipe, counts = timed(extract, cfg)
        parts = _serial_parts(cfg, scratch)
    else:
        parts = _serial_parts(cfg, scratch)
        t_pipe, cpu_pipe, counts = timed(extract, cfg)
    if abs(counts.audio_s - parts["audio_s"]) > 1e-6:
        raise RuntimeError(f"pipeline saw {counts.audio_s} s of audio, the bare pass {parts['audio_s']} s")
    return {**parts, "pipeline_s": t_pipe, "ratio": parts["bare_forward_s"] / t_pipe,
            "ratio_without_load": parts["bare_forward_s"] / (t_pipe - parts["load_model_s"]),
            "pipeline_model_s": counts.model_s, "cores_used_pipeline": cpu_pipe / t_pipe,
            "frames_x_layers": counts.frames, "shards": counts.shards}


def _serial_parts(cfg, scratch: Path) -> dict:
    """What extract() does, step by step on the same corpus: load, read + decode, bare forward,
    frames tables, Parquet encoding, and writing + committing (encoding included) into `scratch`."""
    from pipeline.stages.extract import frames_tables
    from pipeline.model import load_model, parse_layers

    device, precision = compute_settings()
    t_load, _, loaded = timed(load_model, cfg.model, device=device, dtype=precision,
                              cache_dir=Path(cfg.warehouse) / "_models")
    layers = parse_layers(cfg.layers, loaded.num_layers)
    dims = {layer: loaded.layer_dim(layer) for layer in layers}
    t_decode, _, shards = timed(_decode_shards, cfg)
    bad = [row for *_, rows in shards for row in rows]
    if bad:
        raise RuntimeError(f"{len(bad)} utterances of the bench corpus were quarantined, e.g. {bad[0]}")
    t_model, cpu_model, outputs = timed(_bare_forward, loaded, shards, layers, cfg)
    t_tables, _, tables = timed(lambda: [frames_tables(prep, outs, dims, loaded.geometry, cfg.dtype)
                                         for (_, _, prep, _), outs in zip(shards, outputs)])
    t_encode, _, _ = timed(_encode_frames, tables)
    t_write, _, _ = timed(_write_shards, scratch, shards, tables)
    return {"audio_s": sum(p.utterance.duration_s for _, _, prepared, _ in shards for p in prepared),
            "bare_forward_s": t_model, "load_model_s": t_load, "read_decode_s": t_decode,
            "frames_tables_s": t_tables, "parquet_encode_s": t_encode, "write_commit_s": t_write,
            "cores_used_bare": cpu_model / t_model}


def _extract_benchmark(ctx: Context, name: str) -> dict:
    from pipeline.stages.extract import extract

    case = ctx.plan.extract[name]
    cfg = _extract_config(ctx, name, case)
    # warm-up: builds the default model into the warehouse's _models, first calls of torch and datasets
    extract(dataclasses.replace(cfg, run=f"warmup_{name}", limit=case.shard_size))
    hash_s = _weights_hash_s(ctx, case.model)
    reps = [_one_repeat(ctx, cfg, ctx.tmp / "wh_scratch", pipeline_first=r % 2 == 1) for r in range(ctx.plan.repeats)]
    med = {k: median(r[k] for r in reps) for k in reps[0]}
    audio_s = reps[0]["audio_s"]
    shares = {k: med[k] / med["pipeline_s"] for k in
              ("load_model_s", "read_decode_s", "pipeline_model_s", "frames_tables_s", "write_commit_s",
               "parquet_encode_s")}
    ratio = med["ratio"]
    result = {
        "model": case.model, "layers": case.layers, "utterances": case.utterances, "shard_size": case.shard_size,
        "audio_s": round(audio_s, 2), "repeats": reps,
        "bare_forward_audio_s_per_s": audio_s / med["bare_forward_s"],
        "pipeline_audio_s_per_s": audio_s / med["pipeline_s"],
        "ratio_median_of_repeats": ratio, "ratio_of_medians": med["bare_forward_s"] / med["pipeline_s"],
        "ratio_without_model_load": med["ratio_without_load"],
        "share_of_pipeline_wall": shares,
        "model_slowdown_inside_pipeline": med["pipeline_model_s"] / med["bare_forward_s"],
        "load_model_weights_sha256_s": hash_s,
        "checks": [check("pipeline / bare forward throughput", ratio, ">=", 0.9)],
    }
    result["summary"] = [
        f"{case.model} model, layers {case.layers}, {case.utterances} utterances ({audio_s:.1f} s audio), "
        f"shard size {case.shard_size}, {ctx.plan.repeats} repeats (medians)",
        f"  bare forward {result['bare_forward_audio_s_per_s']:.2f} audio s/s "
        f"({med['cores_used_bare']:.2f} cores busy); pipeline {result['pipeline_audio_s_per_s']:.2f} audio s/s "
        f"({med['cores_used_pipeline']:.2f} cores busy)",
        f"  ratio {ratio:.3f} (without model load {med['ratio_without_load']:.3f}); model time inside the "
        f"pipeline {result['model_slowdown_inside_pipeline']:.2f}x the bare pass",
        f"  parts timed serially, as shares of the pipeline's wall time: load_model {shares['load_model_s']:.1%}, "
        f"read+decode {shares['read_decode_s']:.1%}, model (inside the pipeline) {shares['pipeline_model_s']:.1%}, "
        f"frames_tables {shares['frames_tables_s']:.1%}, write+commit {shares['write_commit_s']:.1%}; "
        f"Parquet encoding alone (a part of writing) {shares['parquet_encode_s']:.1%}",
        f"  load_model {med['load_model_s']:.2f} s, of which hashing the weight files {hash_s:.2f} s",
        *map(check_line, result["checks"]),
    ]
    return result


def _weights_hash_s(ctx: Context, model: str) -> float:
    """Seconds load_model spends on folder_fingerprint (sha256 of the weight files) for `model`."""
    from pipeline.model import default_model_path, folder_fingerprint

    source = ctx.model_source(model)
    folder = default_model_path(ctx.warehouse / "_models") if source == "default" else Path(source)
    return median(timed(folder_fingerprint, folder)[0] for _ in range(3))


@benchmark("extract_default")
def extract_default(ctx: Context) -> dict:
    return _extract_benchmark(ctx, "extract_default")


@benchmark("extract_base")
def extract_base(ctx: Context) -> dict:
    return _extract_benchmark(ctx, "extract_base")


# ---------------------------------------------------------------- peak memory


# Runs `python -m pipeline ...` and, at its exit, prints the high-water RSS of its own address space.
# Not ru_maxrss: a child forked from this (large) process inherits the parent's peak in ru_maxrss
# (Linux records the pre-exec address space's high-water mark), so wait4 / RUSAGE_CHILDREN reported
# this process's ~3 GB for every extraction subprocess.
PEAK_WRAPPER = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    sys.stderr.write(f"BENCH_VMHWM_KB {kb}\\n")
atexit.register(report)
sys.argv[0] = "pipeline"
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def _peak_rss(args: list[str], log: Path) -> dict:
    """Peak RSS of `python -m pipeline ARGS` (VmHWM at exit), and the highest RSS polled from /proc
    in the first and in the second half of its run (a leak shows as a higher second half)."""
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    samples: list[tuple[float, int]] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", PEAK_WRAPPER, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
        while proc.poll() is None:
            samples.append((time.perf_counter() - started, _rss_kb(proc.pid)))
            time.sleep(0.1)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"python -m pipeline {' '.join(args)} exited {proc.returncode}; see {log}:\n{text[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("BENCH_VMHWM_KB"))
    halves = [max([kb for t, kb in samples if (t < wall / 2) == first] or [0]) / 1024 for first in (True, False)]
    return {"peak_rss_mb": peak_kb / 1024, "wall_s": wall,
            "polled_max_rss_mb_first_half": halves[0], "polled_max_rss_mb_second_half": halves[1]}


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


@benchmark("memory")
def memory(ctx: Context) -> dict:
    from pipeline.model import default_model_path, ensure_default_model

    plan = ctx.plan
    wh = ctx.warehouse
    ensure_default_model(default_model_path(wh / "_models"))  # built once, outside the measured runs
    small, small_s = ctx.corpus(plan.memory_utterances)
    large, large_s = ctx.corpus(plan.memory_utterances, times=10)
    cmd = ["extract", "--format", "hf", "--warehouse", str(wh), "--no-progress",
           "--shard-size", str(plan.memory_shard_size), "--overwrite"]
    runs = {"startup (--limit 0)": (small, 0.0, ["--limit", "0"]), "1x": (small, small_s, []),
            "10x": (large, large_s, [])}
    out = {}
    for label, (corpus, audio_s, extra) in runs.items():
        run = "mem_" + label.split()[0]
        out[label] = {"audio_s": round(audio_s, 2),
                      **_peak_rss([*cmd, "--corpus", str(corpus), "--run", run, *extra], ctx.tmp / f"{run}.log")}
    p0, p1, p10 = (out[k]["peak_rss_mb"] for k in runs)
    ratio = p10 / p1
    growth = (p10 - p0) / (p1 - p0) if p1 > p0 else float("nan")
    result = {"model": "default", "layers": "all", "shard_size": plan.memory_shard_size,
              "utterances_1x": plan.memory_utterances, "runs": out, "ratio_10x_to_1x": ratio,
              "ratio_above_startup": growth,
              "checks": [check("peak RSS 10x / 1x", ratio, "<=", 1.1)]}
    result["summary"] = [
        f"python -m pipeline extract, default model, all layers, shard size {plan.memory_shard_size}",
        *(f"  {k:20s} {v['audio_s']:7.1f} s audio  peak RSS {v['peak_rss_mb']:7.1f} MB  "
          f"(polled max: first half {v['polled_max_rss_mb_first_half']:.0f} MB, second half "
          f"{v['polled_max_rss_mb_second_half']:.0f} MB)  {v['wall_s']:.1f} s" for k, v in out.items()),
        f"  10x / 1x = {ratio:.3f}; above the startup peak: {growth:.2f}x",
        *map(check_line, result["checks"]),
    ]
    return result


@benchmark("long_recording")
def long_recording(ctx: Context) -> dict:
    from bench.long_recording import run

    return run(ctx.tmp, ctx.plan.long_recording_minutes)


# ---------------------------------------------------------------- bytes on disk


DISK_LAYERS = {"default": "all", "base": "-1,0,1"}  # base: the forward pass stops after layer 1


@benchmark("disk_bytes")
def disk_bytes(ctx: Context) -> dict:
    """Frames files of one pipeline run per model at the default shard size (one file per layer)."""
    from pipeline.stages.extract import ExtractConfig, extract

    corpus, _ = ctx.corpus(ctx.plan.disk_utterances)
    result: dict[str, Any] = {"utterances": ctx.plan.disk_utterances, "checks": [], "summary": []}
    for model, layers in DISK_LAYERS.items():
        cfg = ExtractConfig(run=f"disk_{model}", model=ctx.model_source(model), format="hf", corpus=str(corpus),
                            layers=layers, warehouse=str(ctx.warehouse), overwrite=True, progress=False)
        extract(cfg)
        run_dir = ctx.warehouse / "frames" / f"run={cfg.run}"
        r = {"layers_stored": layers, "shard_size": cfg.shard_size, **_frames_bytes(run_dir),
             "vector_dictionary_off": _dictionary_off(sorted(run_dir.glob("layer=*/part-*.parquet"))[-1])}
        result[model] = r
        result["checks"].append(check(f"{model}: bytes / (frames x layers x 2 D)", r["ratio_to_float16"], "<=", 1.05))
        other = sum(v for k, v in r["column_bytes_per_frame_layer"].items() if k != "vector")
        result["summary"].append(
            f"{model} (layers {layers}, shard size {cfg.shard_size}): {r['frames']} frames x {r['layers']} layers "
            f"in {r['files']} files, {r['bytes'] / 1e6:.2f} MB; {r['bytes_per_frame_layer']:.1f} B per frame and "
            f"layer against 2 D = {r['float16_bytes']:.1f} (ratio {r['ratio_to_float16']:.3f}): vector column "
            f"{r['column_bytes_per_frame_layer']['vector']:.1f} B, other columns {other:.1f} B, "
            f"footers {r['footer_bytes_per_frame_layer']:.2f} B")
        off = r["vector_dictionary_off"]
        result["summary"].append(
            f"  same file rewritten without dictionary encoding of `vector`: {off['bytes_ratio']:.3f}x the bytes, "
            f"{off['write_time_ratio']:.2f}x the write time")
    result["summary"] += [check_line(c) for c in result["checks"]]
    return result


def _dictionary_off(path: Path) -> dict:
    """Warehouse.write's Parquet settings on one frames file, as written and with the dictionary
    encoding of `vector` off (pyarrow dictionary-encodes every column by default)."""
    from pipeline.warehouse import ZSTD_LEVEL

    table = pq.read_table(path)
    kwargs = dict(compression="zstd", compression_level=ZSTD_LEVEL, row_group_size=64 * 1024, write_statistics=True)
    sizes, walls = {}, {}
    for label, extra in (("dict", {}), ("nodict", {"use_dictionary": [c for c in table.column_names if c != "vector"]})):
        for _ in range(3):
            buf = io.BytesIO()
            walls.setdefault(label, []).append(timed(pq.write_table, table, buf, **kwargs, **extra)[0])
            sizes[label] = buf.tell()
    return {"file": path.parent.name + "/" + path.name, "rows": table.num_rows,
            "bytes_ratio": sizes["nodict"] / sizes["dict"],
            "write_time_ratio": median(walls["nodict"]) / median(walls["dict"])}


def _frames_bytes(run_dir: Path) -> dict:
    files = sorted(run_dir.glob("layer=*/part-*.parquet"))
    total = rows_total = float16 = footer = 0
    columns: dict[str, int] = {}
    per_layer = {}
    for f in files:
        md = pq.read_metadata(f)
        dim = pq.read_schema(f).field("vector").type.list_size
        size = f.stat().st_size
        chunks = 0
        for g in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(g).column(c)
                top = col.path_in_schema.split(".")[0]
                columns[top] = columns.get(top, 0) + col.total_compressed_size
                chunks += col.total_compressed_size
        total, rows_total, float16, footer = total + size, rows_total + md.num_rows, float16 + 2 * dim * md.num_rows, \
            footer + size - chunks
        layer = f.parent.name.split("=")[1]
        d = per_layer.setdefault(layer, {"dim": dim, "rows": 0, "bytes": 0})
        d["rows"] += md.num_rows
        d["bytes"] += size
    for d in per_layer.values():
        d["ratio_to_float16"] = d["bytes"] / (2 * d["dim"] * d["rows"])
    frames = rows_total // len(per_layer)
    return {"files": len(files), "layers": len(per_layer), "frames": frames, "bytes": total,
            "bytes_per_frame_layer": total / rows_total, "float16_bytes": float16 / rows_total,
            "ratio_to_float16": total / float16,
            "column_bytes_per_frame_layer": {k: v / rows_total for k, v in sorted(columns.items())},
            "footer_bytes_per_frame_layer": footer / rows_total, "per_layer": per_layer}


# ---------------------------------------------------------------- k-means


def mixture(n: int, d: int, seed: int = 0, components: int = 400, rank: int = 64) -> np.ndarray:
    """Frame-like vectors: a Gaussian mixture of `components` uneven clusters (Zipf-like weights, like
    phone frequencies; per-cluster spread) in a `rank`-dim subspace, plus isotropic noise in all d."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, components + 1) ** 0.8
    labels = rng.choice(components, size=n, p=weights / weights.sum())
    centres = rng.standard_normal((components, rank), dtype=np.float32) * 2.0
    spread = rng.uniform(0.5, 1.5, components).astype(np.float32)
    z = centres[labels] + spread[labels, None] * rng.standard_normal((n, rank), dtype=np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)
    x = z @ basis
    x += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return x


# For information, no target: fit_kmeans(n_init=3), the best of 3 k-means++ seedings (sklearn: best of 20).
# One seeding's inertia varied by +-0.2 % with the seed on 20,000 points; three seedings were below sklearn's.
FAISS_MULTI_START = 3


@benchmark("kmeans")
def kmeans(ctx: Context) -> dict:
    from pipeline.algorithms import kmeans as km
    from sklearn.cluster import MiniBatchKMeans

    plan = ctx.plan
    n, d, k = plan.kmeans_points, plan.kmeans_dim, plan.kmeans_k
    x = mixture(n, d)
    threads = km.set_threads(None)
    # sklearn runs once (minutes); FAISS runs before it, after it, and once more timed in parts,
    # so that both sides see the neighbours' load of the same minutes
    fits = [timed(km.fit_kmeans, x, k, seed=0)]
    sk_s, sk_cpu, sk = timed(lambda: MiniBatchKMeans(n_clusters=k, random_state=0, **FAIRSEQ_MINIBATCH).fit(x))
    fits.append(timed(km.fit_kmeans, x, k, seed=0))
    multi_s, multi_cpu, multi = timed(km.fit_kmeans, x, k, seed=0, n_init=FAISS_MULTI_START)
    parts, parts_cpu = _fit_in_parts(km, x, k)
    walls = [f[0] for f in fits] + [sum(v for key, v in parts.items() if not key.endswith("blas_1_thread"))]
    cpus = [f[1] for f in fits] + [parts_cpu]
    sk_inertia = float(km.assign(x, sk.cluster_centers_)[1].sum(dtype=np.float64))
    fit = fits[0][2]
    faiss_s, faiss_cpu = median(walls), median(cpus)
    rates = _assign_rates(km, k, d, plan)
    result = {
        "data": f"Gaussian mixture, {n} x {d} float32, 400 uneven components in a 64-d subspace + noise (seed 0)",
        "k": k, "threads": threads,
        "sklearn": {"settings": {**FAIRSEQ_MINIBATCH, "random_state": 0}, "wall_s": sk_s, "cpu_s": sk_cpu,
                    "inertia": sk_inertia, "n_steps": int(sk.n_steps_), "n_iter": int(sk.n_iter_)},
        "faiss": {"settings": "fit_kmeans(x, k, seed=0) defaults: n_init=1, n_iter=100 (stops early when the "
                              "objective is unchanged); k-means++ on <= 20,000 + 50 k points, Lloyd on every point",
                  "wall_s": faiss_s, "walls_s": walls, "cpu_s": faiss_cpu, "cpus_s": cpus, "inertia": fit.inertia,
                  "iterations": fit.iterations, "parts_s": parts},
        f"faiss_n_init_{FAISS_MULTI_START}": {"wall_s": multi_s, "cpu_s": multi_cpu, "inertia": multi.inertia,
                                              "iterations": multi.iterations, "timed_runs": 1},
        "speedup_wall": sk_s / faiss_s, "speedup_cpu": sk_cpu / faiss_cpu, "inertia_ratio": fit.inertia / sk_inertia,
        f"speedup_wall_n_init_{FAISS_MULTI_START}": sk_s / multi_s,
        f"inertia_ratio_n_init_{FAISS_MULTI_START}": multi.inertia / sk_inertia,
        "assign": rates,
        "checks": [check("sklearn wall time / FAISS wall time (fit_kmeans defaults)", sk_s / faiss_s, ">=", 20),
                   check("FAISS inertia / sklearn inertia (fit_kmeans defaults)", fit.inertia / sk_inertia, "<=", 1.0)],
    }
    result["summary"] = [
        f"{result['data']}, k = {k}, {threads} threads",
        f"  sklearn MiniBatchKMeans (fairseq HuBERT settings): {sk_s:.1f} s ({sk_cpu:.0f} CPU s), "
        f"inertia {sk_inertia:.6g}, {sk.n_steps_} minibatch steps",
        f"  FAISS fit_kmeans (defaults, n_init=1): {faiss_s:.2f} s (runs: {', '.join(f'{w:.1f}' for w in walls)} s; "
        f"{faiss_cpu:.0f} CPU s), inertia {fit.inertia:.6g}, {fit.iterations} Lloyd iterations: "
        f"x{sk_s / faiss_s:.1f} faster (x{sk_cpu / faiss_cpu:.1f} in CPU time), inertia {fit.inertia / sk_inertia:.4f} "
        f"of sklearn's",
        f"  FAISS fit_kmeans n_init={FAISS_MULTI_START} (one run): {multi_s:.2f} s, x{sk_s / multi_s:.1f} faster, "
        f"inertia {multi.inertia / sk_inertia:.4f} of sklearn's",
        "  FAISS fit in parts: " + ", ".join(f"{a} {b:.2f} s" for a, b in parts.items()),
        "  assign: " + ", ".join(f"{t} thread(s) {r['frames_per_s']:,.0f} frames/s = {r['frames_per_s_per_core']:,.0f} "
                                 f"per core" for t, r in rates["by_threads"].items())
        + "; 1 thread in parts: " + ", ".join(f"{a} {b:.1%}" for a, b in rates["share_1_thread"].items()),
        *map(check_line, result["checks"]),
    ]
    return result


def _fit_in_parts(km, x: np.ndarray, k: int) -> tuple[dict, float]:
    """fit_kmeans's steps timed one by one (k-means++ seeding, FAISS Lloyd, the exact inertia pass),
    and the seeding again with BLAS limited to one thread (as sklearn limits its minibatch loop).
    Returns ({step: wall s}, CPU s of the three steps)."""
    from threadpoolctl import threadpool_limits

    t_pp, c_pp, init = timed(km._kmeans_pp, x, k, 0)
    t_lloyd, c_lloyd, (centroids, _) = timed(km._lloyd, x, init, 100, 0, False)
    t_assign, c_assign, _ = timed(km.assign, x, centroids)
    with threadpool_limits(1, user_api="blas"):
        t_pp1, _, _ = timed(km._kmeans_pp, x, k, 0)
    return ({"kmeans_pp": t_pp, "lloyd": t_lloyd, "assign_inertia": t_assign, "kmeans_pp_blas_1_thread": t_pp1},
            c_pp + c_lloyd + c_assign)


def _assign_rates(km, k: int, d: int, plan: Plan) -> dict:
    """pipeline.algorithms.kmeans.assign on float16 rows (as read from Parquet), one thread and all threads;
    with one thread also its parts: float16 -> float32, FAISS search, exact distance recomputation."""
    x = mixture(plan.assign_points, d, seed=1).astype(np.float16)
    centroids = mixture(k, d, seed=2)
    out = {}
    for threads in sorted({1, km.set_threads(None)}):
        km.set_threads(threads)
        walls = [timed(km.assign, x, centroids)[0] for _ in range(plan.repeats)]
        rate = len(x) / median(walls)
        out[threads] = {"frames_per_s": rate, "frames_per_s_per_core": rate / threads, "walls_s": walls}
    km.set_threads(1)
    index = km._flat_index(centroids, False)
    t_convert, _, xf = timed(lambda: np.ascontiguousarray(x, dtype=np.float32))
    t_search, _, nearest = timed(index.search, xf, 1)
    t_exact, _, _ = timed(km._exact_squared_distances, xf, centroids, nearest[1].ravel().astype(np.int32))
    km.set_threads(None)
    total = t_convert + t_search + t_exact
    return {"by_threads": out, "share_1_thread": {"float16_to_float32": t_convert / total,
                                                   "faiss_search": t_search / total,
                                                   "exact_distances": t_exact / total}}


# ---------------------------------------------------------------- analyze: peak memory


@benchmark("analyze_memory")
def analyze_memory(ctx: Context) -> dict:
    """Peak RSS of `python -m pipeline analyze` on a run and on a run ten times longer, with the same
    k-means sample (sample_per_label small enough that the shorter run already fills it), so the
    only difference is the number of frames streamed through the centroids. The shorter run has two
    files per layer, the longer twenty: with a single file, the 1x run would stop before the
    streaming loop reaches its steady state (measured: RSS grows over the first two files, then
    stays flat file after file)."""
    from pipeline.stages.extract import ExtractConfig, extract
    from pipeline.model import default_model_path, ensure_default_model

    plan = ctx.plan
    wh = ctx.warehouse
    ensure_default_model(default_model_path(wh / "_models"))
    out, frames = {}, {}
    for label, times in (("1x", 1), ("10x", 10)):
        corpus, _ = ctx.corpus(plan.analyze_utterances, times=times)
        run = f"analyze_mem_{label}"
        counts = extract(ExtractConfig(run=run, format="hf", corpus=str(corpus), layers=ANALYZE_LAYERS,
                                       shard_size=plan.analyze_utterances // 2, warehouse=str(wh), overwrite=True,
                                       progress=False))
        frames[label] = counts.frames // len(ANALYZE_LAYERS.split(","))
        args = ["analyze", "--run", run, "--warehouse", str(wh), "--k", str(ANALYZE_K),
                "--sample-per-label", str(ANALYZE_SAMPLE_PER_LABEL), "--batch-frames", str(ANALYZE_BATCH_FRAMES)]
        out[label] = {"frames_per_layer": frames[label], **_peak_rss(args, ctx.tmp / f"{run}.log")}
    ratio = out["10x"]["peak_rss_mb"] / out["1x"]["peak_rss_mb"]
    result = {"layers": ANALYZE_LAYERS, "k": ANALYZE_K, "sample_per_label": ANALYZE_SAMPLE_PER_LABEL,
              "batch_frames": ANALYZE_BATCH_FRAMES, "runs": out, "ratio_10x_to_1x": ratio,
              "checks": [check("analyze peak RSS, 10x frames / 1x frames", ratio, "<=", 1.1)]}
    result["summary"] = [
        f"python -m pipeline analyze, default model, layers {ANALYZE_LAYERS}, k = {ANALYZE_K}, "
        f"{ANALYZE_SAMPLE_PER_LABEL} frames per phone in the k-means sample, batches of {ANALYZE_BATCH_FRAMES} frames, "
        f"shards of {plan.analyze_utterances // 2} utterances",
        *(f"  {k:4s} {v['frames_per_layer']:8,d} frames per layer  peak RSS {v['peak_rss_mb']:7.1f} MB  "
          f"(polled max: first half {v['polled_max_rss_mb_first_half']:.0f} MB, second half "
          f"{v['polled_max_rss_mb_second_half']:.0f} MB)  {v['wall_s']:.1f} s" for k, v in out.items()),
        f"  10x / 1x = {ratio:.3f}",
        *map(check_line, result["checks"]),
    ]
    return result


ANALYZE_LAYERS = "-1,4"
ANALYZE_K = 20
ANALYZE_SAMPLE_PER_LABEL = 10  # every phone of the 1x run has >= 10 frames, so both samples are equal
ANALYZE_BATCH_FRAMES = 4_096  # small batches: the 1x run already streams several


# ---------------------------------------------------------------- reductions


@benchmark("reduce")
def reduce_maps(ctx: Context) -> dict:
    """t-SNE (openTSNE, as `reduce` runs it) and UMAP of n frame-like vectors after the PCA to 50
    dimensions that `reduce` applies, against scikit-learn's Barnes-Hut t-SNE on the same 50-d data."""
    import sklearn
    from sklearn.manifold import TSNE

    from pipeline.stages.reduce import StreamingPCA, _tsne, _umap

    n, d = ctx.plan.reduce_points, 256  # d of the default model's layers
    x = mixture(n, d, seed=3)
    t_pca, _, pca = timed(lambda: StreamingPCA(50).partial_fit(x).finish())
    z = pca.transform(x).astype(np.float32)
    t_open, c_open, (_, open_info) = timed(_tsne, z, 30.0, 0)
    timed(_umap, z[:200], 15, 0.1, 0)  # numba compiles UMAP's kernels on first use: not part of the timing
    t_umap, c_umap, _ = timed(_umap, z, 15, 0.1, 0)
    t_sk, c_sk, _ = timed(lambda: TSNE(n_components=2, perplexity=30.0, init="pca", learning_rate="auto",
                                      method="barnes_hut", random_state=0).fit_transform(z))
    result = {"data": f"Gaussian mixture, {n} x {d} (400 uneven components; seed 3) -> PCA 50",
              "points": n, "pca_s": t_pca,
              "tsne_opentsne": {"wall_s": t_open, "cpu_s": c_open, **open_info},
              "umap": {"wall_s": t_umap, "cpu_s": c_umap, "n_neighbors": 15, "min_dist": 0.1},
              "tsne_sklearn": {"wall_s": t_sk, "cpu_s": c_sk, "impl": f"scikit-learn {sklearn.__version__} barnes_hut"},
              "ratio_sklearn_to_opentsne": t_sk / t_open, "ratio_sklearn_to_umap": t_sk / t_umap,
              "checks": []}
    result["summary"] = [
        result["data"],
        f"  t-SNE, openTSNE (reduce's): {t_open:.1f} s   UMAP: {t_umap:.1f} s (after numba's compile)   "
        f"t-SNE, scikit-learn Barnes-Hut: {t_sk:.1f} s",
        f"  scikit-learn t-SNE / openTSNE = {t_sk / t_open:.1f}x; scikit-learn t-SNE / UMAP = {t_sk / t_umap:.1f}x",
    ]
    return result


# ---------------------------------------------------------------- machine, results, CLI


def machine_facts() -> dict:
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "cpu_pressure_at_start": cpu_pressure(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: version(dist) for name, dist in [
            ("torch", "torch"), ("faiss", "faiss-cpu"), ("faiss_gpu", "faiss-gpu-cu12"),
            ("scikit-learn", "scikit-learn"), ("transformers", "transformers"), ("datasets", "datasets"),
            ("pyarrow", "pyarrow"), ("numpy", "numpy")] if version(dist)},
    }


def cpu_pressure() -> dict | None:
    """Linux PSI: % of time some runnable task waited for a CPU (avg10/avg60/avg300): the neighbours' load."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return {k: float(v) for k, v in (f.split("=") for f in line.split()[1:]) if k.startswith("avg")}


def _same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu_model", "cpu_count", "cpu_affinity", "cuda", "versions")
    return all(a.get(k) == b.get(k) for k in keys)


def write_results(out: Path, machine: dict, mode: str, corpus: str, results: dict, wall_s: float) -> dict:
    """Write `out`; a partial run (--only) keeps the other benchmarks' results from the same machine."""
    doc = {"machine": machine, "benchmarks": {}}
    if out.exists():
        old = json.loads(out.read_text())
        if _same_machine(old.get("machine", {}), machine):
            doc["benchmarks"] = old.get("benchmarks", {})
    for name, r in results.items():
        doc["benchmarks"][name] = {"measured_utc": machine["date_utc"], "mode": mode, "corpus": corpus, **r}
    doc["benchmarks"] = {k: doc["benchmarks"][k] for k in BENCHMARKS if k in doc["benchmarks"]}
    doc["last_run"] = {"benchmarks": list(results), "mode": mode, "wall_s": round(wall_s, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_rounded(doc), indent=1) + "\n")
    os.replace(tmp, out)
    return doc


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4) if abs(obj) < 1e6 else round(obj, 1)
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results.json", help="results JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes: ~2 minutes instead of ~5 on a quiet machine")
    p.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    p.add_argument("--corpus", default="auto", choices=["auto", "embedded", "synthetic"],
                   help="auto: the embedded corpus when pipeline/corpus/embedded/data has Parquet files, else synthetic")
    p.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)  # run one benchmark, JSON to --out
    return p


def run_child(name: str, args: argparse.Namespace, corpus: str, scratch: Path) -> dict:
    """One benchmark in a fresh interpreter, so that the libraries, thread pools and heap one
    benchmark leaves behind cannot change the next one's numbers (torch's, FAISS's and sklearn's
    OpenMP runtimes and two OpenBLAS builds share these 2 cores)."""
    out = scratch / f"result-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.run", "--child", name, "--out", str(out), "--corpus", corpus,
           "--scratch", str(scratch), *(["--quick"] if args.quick else [])]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)})
    if done.returncode or not out.exists():
        return {"error": f"exited {done.returncode}", "summary": [f"  FAILED: exited {done.returncode}"], "checks": []}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    from pipeline.corpus.sources import EMBEDDED_DATA

    corpus = args.corpus
    if corpus == "auto":
        corpus = "embedded" if any(EMBEDDED_DATA.glob("*.parquet")) else "synthetic"
    mode = "quick" if args.quick else "full"
    if args.child:  # internal: one benchmark, its result as JSON in --out
        t0 = time.perf_counter()
        result = BENCHMARKS[args.child](Context(PLANS[mode], args.scratch, corpus))
        result["wall_s"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(result, default=float))
        return 0
    names = args.only or list(BENCHMARKS)
    machine = machine_facts()
    print(f"bench ({mode}, corpus {corpus}): {', '.join(names)}\nmachine: {json.dumps(machine)}", flush=True)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {}
    try:
        for name in names:
            results[name] = run_child(name, args, corpus, scratch)
            print(f"\n== {name} ({results[name].get('wall_s', 0):.0f} s)\n" + "\n".join(results[name]["summary"]),
                  flush=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - started
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    machine["cpu_pressure_at_end"] = cpu_pressure()
    write_results(args.out, machine, mode, corpus, results, wall)
    missed = [f"{n}: {c['what']}" for n, r in results.items() for c in r.get("checks", []) if not c["met"]]
    failed = [n for n, r in results.items() if "error" in r]
    print(f"\n{len(names)} benchmarks in {wall:.0f} s -> {args.out}; targets not met: {len(missed)}; failed: {failed}")
    for m in missed:
        print("  " + m)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
