"""The CUDA bench (issue 12, part 5): `python -m bench.gpu` (or `make bench-gpu`), one GPU, ≤ 8 minutes.

On wav2vec2-base geometry (random weights, bench/data.py), all 14 layers stored:

  extraction   `pipeline.stages.extract.extract` end to end on the GPU (its CUDA defaults: bfloat16
               autocast, large length-bucketed batches): × real time, and its wall time against the
               plain loop (bench/plain_loop.py, float32, one utterance at a time) on the same GPU and corpus
  precision    per layer, the max over frames of |x - x_fp32|₂ / |x_fp32|₂ for bfloat16 and float16 autocast,
               against the same for float16 storage of the float32 output (what the warehouse keeps)
  faiss        pipeline.algorithms.kmeans.fit_kmeans and assign on the GPU (faiss-gpu): fit seconds and
               assigned frames per second, on frame-like 768-d vectors

Without CUDA it exits with status 2 and one line saying so. `--precision-only --device cpu` runs the
precision part alone on the CPU (bfloat16 autocast there is the opt-in `extract --precision bfloat16`).
Results go to --out as JSON with the machine facts (default bench/results-gpu.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import QUIET_ENV, REPO, machine_facts

NO_CUDA = ("error: no CUDA device here (torch.cuda.is_available() is False): bench/gpu.py measures the GPU path; "
           "run it on a machine with an NVIDIA GPU and a CUDA build of torch (and faiss-gpu for the k-means part), "
           "or run `python -m bench.gpu --precision-only --device cpu` for the precision part on the CPU")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results-gpu.json", help="results JSON")
    p.add_argument("--utterances", type=int, default=960,
                   help="corpus size: embedded utterances, cycled with new ids (960 = 0.56 h)")
    p.add_argument("--loop-utterances", type=int, default=240,
                   help="the plain loop's share of the corpus (its time is scaled to the whole corpus)")
    p.add_argument("--precision-utterances", type=int, default=16)
    p.add_argument("--kmeans-points", type=int, default=200_000)
    p.add_argument("--kmeans-k", type=int, default=500)
    p.add_argument("--assign-points", type=int, default=2_000_000)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: only with --precision-only")
    p.add_argument("--precision-only", action="store_true", help="only the per-layer error of bf16 / fp16")
    p.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    return p


def check_args(args: argparse.Namespace, cuda: bool) -> str | None:
    """The one-line error for arguments this machine cannot run, or None."""
    if args.device == "cpu" and not args.precision_only:
        return "error: --device cpu runs only the precision part: add --precision-only"
    if args.device == "cuda" and not cuda:
        return NO_CUDA
    for name in ("utterances", "loop_utterances", "precision_utterances", "kmeans_points", "kmeans_k",
                 "assign_points"):
        if getattr(args, name) < 1:
            return f"error: --{name.replace('_', '-')} must be >= 1"
    return None


def layer_errors(reference: list[dict[int, np.ndarray]], other: list[dict[int, np.ndarray]]) -> dict[int, float]:
    """Per layer, the max over all frames of ‖other − reference‖₂ / ‖reference‖₂ (norm-0 frames skipped)."""
    out = {}
    for layer in reference[0]:
        worst = 0.0
        for ref, oth in zip(reference, other):
            r = ref[layer].astype(np.float64)
            norm = np.linalg.norm(r, axis=1)
            keep = norm > 0
            if keep.any():
                err = np.linalg.norm(oth[layer].astype(np.float64) - r, axis=1)[keep] / norm[keep]
                worst = max(worst, float(err.max()))
        out[layer] = worst
    return out


def precision_errors(folder: Path, waves: list[np.ndarray], device: str) -> dict:
    """bfloat16 / float16 autocast against float32, and float16 storage, per layer (pipeline.model.extract)."""
    from pipeline.model import extract, load_model

    runs = {}
    for dtype in ("float32", "bfloat16", "float16"):
        if dtype == "float16" and device == "cpu":
            continue  # float16 autocast on CPU is not what anyone runs
        loaded = load_model(str(folder), device=device, dtype=dtype)
        runs[dtype] = extract(loaded, waves, "all")
        del loaded
    ref = runs["float32"]
    stored = [{layer: a.astype(np.float16) for layer, a in r.items()} for r in ref]
    result = {"storage_float16": layer_errors(ref, stored)}
    for dtype in ("bfloat16", "float16"):
        if dtype in runs:
            result[f"autocast_{dtype}"] = layer_errors(ref, runs[dtype])
    result["below_storage_error"] = {
        name: all(errs[layer] <= result["storage_float16"][layer] for layer in errs)
        for name, errs in result.items() if name.startswith("autocast")}
    return result


def corpus_waves(path: Path, n: int) -> list[np.ndarray]:
    import pyarrow.parquet as pq
    import soundfile as sf

    audio = pq.read_table(path, columns=["audio"]).slice(0, n)["audio"].to_pylist()
    return [sf.read(io.BytesIO(a["bytes"]), dtype="float32")[0] for a in audio]


def extraction(folder: Path, corpus: Path, loop_corpus: Path, scratch: Path) -> dict:
    import torch

    from bench.plain_loop import plain_loop
    from pipeline.stages.extract import ExtractConfig, extract

    cfg = ExtractConfig(run="gpu", model=str(folder), format="hf", corpus=str(corpus), warehouse=str(scratch / "wh"),
                        device="cuda", overwrite=True, progress=False)
    extract(ExtractConfig(**{**cfg.__dict__, "run": "warmup", "limit": 64}))  # CUDA context, kernels, imports
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    counts = extract(cfg)
    torch.cuda.synchronize()
    pipe_s = time.perf_counter() - t0
    out = scratch / "loop"
    plain_loop(folder, loop_corpus, out, device="cuda", limit=8)  # warm-up
    shutil.rmtree(out, ignore_errors=True)
    loop = plain_loop(folder, loop_corpus, out, device="cuda")
    shutil.rmtree(out, ignore_errors=True)
    loop_s = loop["wall_s"] * counts.audio_s / loop["audio_s"]  # scaled to the whole corpus's audio
    return {"audio_s": counts.audio_s, "pipeline_s": pipe_s, "pipeline_x_real_time": counts.audio_s / pipe_s,
            "pipeline_model_s": counts.model_s, "bytes": counts.bytes,
            "loop_utterances": loop["utterances"], "loop_s_measured": loop["wall_s"],
            "loop_x_real_time": loop["audio_s"] / loop["wall_s"], "loop_s_scaled": loop_s,
            "ratio_pipeline_over_loop": pipe_s / loop_s}


def faiss_gpu(points: int, k: int, assign_points: int) -> dict:
    from bench.data import mixture
    from pipeline.algorithms import kmeans as km

    if km._num_gpus() == 0:
        return {"error": "FAISS sees no GPU (faiss-gpu not installed?): k-means part skipped"}
    x = mixture(points, 768)
    km.fit_kmeans(x[:20_000], 50, gpu=True)  # warm-up
    t0 = time.perf_counter()
    fit = km.fit_kmeans(x, k, seed=0, gpu=True)
    fit_s = time.perf_counter() - t0
    y = np.resize(x, (assign_points, 768)).astype(np.float16)  # float16 rows, as read from Parquet
    t0 = time.perf_counter()
    km.assign(y, fit.centroids, gpu=True)
    assign_s = time.perf_counter() - t0
    return {"points": points, "dim": 768, "k": k, "fit_s": fit_s, "iterations": getattr(fit, "iterations", None),
            "assign_points": assign_points, "assign_s": assign_s, "assign_frames_per_s": assign_points / assign_s}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    problem = check_args(args, torch.cuda.is_available())
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from bench.data import build_base_model, embedded_rows
    import pyarrow.parquet as pq

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc = {"machine": machine_facts(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        folder = scratch / "wav2vec2-base-random"
        if not (folder / "model.safetensors").exists():
            build_base_model(folder)
        corpus = scratch / f"corpus-{args.utterances}.parquet"
        pq.write_table(embedded_rows(args.utterances), corpus)
        t0 = time.perf_counter()
        doc["precision"] = precision_errors(folder, corpus_waves(corpus, args.precision_utterances), args.device)
        doc["precision"]["wall_s"] = time.perf_counter() - t0
        _print("precision", doc["precision"])
        if not args.precision_only:
            loop_corpus = scratch / f"corpus-{args.loop_utterances}.parquet"
            pq.write_table(embedded_rows(min(args.loop_utterances, args.utterances)), loop_corpus)
            doc["extraction"] = extraction(folder, corpus, loop_corpus, scratch)
            _print("extraction", doc["extraction"])
            doc["faiss"] = faiss_gpu(args.kmeans_points, args.kmeans_k, args.assign_points)
            _print("faiss", doc["faiss"])
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    doc["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"bench.gpu: {doc['wall_s']:.0f} s -> {args.out}")
    return 0


def _print(name: str, result: dict) -> None:
    print(f"== {name}\n{json.dumps(result, indent=1, default=float)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
