"""`extract_default`, `extract_base`: pipeline.stages.extract.extract end to end against the bare
forward pass (pipeline.model.extract over the same length buckets, waveforms already in memory),
every layer stored (as `make extract`), for the embedded default model and for wav2vec2-base
geometry (768-d, 12 layers; random weights, seed 0). Each repeat also times the pipeline's work
serially in parts (load, read + decode, forward, frames tables, Parquet encoding, write + commit),
as shares of the pipeline's wall time; which of the two goes first alternates between repeats."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import Context, ExtractCase, check, check_line, median, timed


def compute_settings() -> tuple[str, str]:
    """(device, precision) as extract() resolves "auto": bfloat16 autocast on CUDA, float32 on CPU."""
    import torch

    return ("auto", "bfloat16") if torch.cuda.is_available() else ("auto", "float32")


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
    from pipeline.model import extract as forward, length_buckets, max_batch_size_for

    out = []
    for _, _, prepared, _ in shards:
        outputs: list = [None] * len(prepared)
        size = cfg.max_batch_size or max_batch_size_for(loaded.device.type)
        for bucket in length_buckets([len(p.wave) for p in prepared], cfg.max_batch_samples, size):
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


def extract_default(ctx: Context) -> dict:
    return _extract_benchmark(ctx, "extract_default")


def extract_base(ctx: Context) -> dict:
    return _extract_benchmark(ctx, "extract_base")
