"""`python -m bench.run --out bench/results.json`: what the pipeline costs beyond the model, and what FAISS buys.

Each benchmark is a function of the scratch context in its own module, named in BENCHMARKS
(`--only NAME` runs one, `--list` names them):

  extract_vs_loop  bench/loop.py: `python -m pipeline extract` against the plain loop a user writes
                   (bench/plain_loop.py: AutoModel, one utterance at a time, float16 .npy per utterance
                   and layer), fresh processes, alternating: default model on 0.56 h, base geometry and
                   default model on 8.4 min
  startup          bench/loop.py: `extract --limit 0` against `python -c "import torch, transformers"`, that
                   import with the wav2vec2 model class, and the plain loop's import + from_pretrained
  extract_default  bench/extract.py: pipeline.stages.extract.extract end to end against the bare forward
                   pass (pipeline.model.extract over the same length buckets, waveforms already in
                   memory), embedded default model, every layer stored (as `make extract`)
  extract_base     bench/extract.py: the same for wav2vec2-base geometry (768-d, 12 layers; random
                   weights, seed 0)
  memory           bench/memory.py: peak RSS of `python -m pipeline extract` on a corpus and on it ten
                   times over
  long_recording   bench/long_recording.py: peak RSS of `python -m pipeline extract` on one silent
                   recording of 1, 10 and 60 min: growth per minute against the decoded float32 samples
  disk_bytes       bench/disk.py: bytes of the frames files per (frame x layer) against 2 D (float16)
  encoding         bench/encoding.py: the vector column's write and read MB/s per core, the old list<float16>
                   + zstd against fixed-size binary (pipeline/warehouse/vectors.py); DuckDB view rows/s
  open_warehouse   bench/open.py: `pipeline sql` on one run and layer when the rest of the warehouse holds 1x
                   and 100x the files (a LibriSpeech-960 h-shaped run of 61,530 files among them), and a
                   query over N files against DuckDB alone on the same file list
  kmeans           bench/kmeans.py: pipeline.algorithms.kmeans.fit_kmeans (FAISS) against scikit-learn
                   MiniBatchKMeans with fairseq's HuBERT settings, same data; assign throughput
  analyze_memory   bench/analyze_memory.py: peak RSS of `python -m pipeline analyze` on a run and on
                   one with ten times the frames, same k-means sample
  analyze_intervals bench/analyze_intervals.py: `analyze` on the embedded run with its default intervals
                   and CCA against --no-intervals --no-cca (CPU time, interleaved; target <= 1.5)
  reduce           bench/reduce.py: t-SNE (openTSNE) and UMAP as `reduce` runs them, against
                   scikit-learn's Barnes-Hut t-SNE

The machine is shared and noisy: the two sides of every ratio are measured in the same process,
interleaved, `repeats` times, and the median of the per-repeat ratios is reported. Results go to
--out as JSON with the machine facts; bench/README.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench import analyze_intervals, analyze_memory, disk, encoding, extract, kmeans, long_recording, loop, memory, reduce
from bench import open as open_bench  # the alias keeps the builtin `open`
from bench.common import QUIET_ENV, REPO, Context, ExtractCase, Plan, cpu_pressure, machine_facts

# the order of a full run and of results.json
BENCHMARKS: dict[str, Callable[[Context], dict]] = {
    "extract_vs_loop": loop.extract_vs_loop,
    "startup": loop.startup,
    "extract_default": extract.extract_default,
    "extract_base": extract.extract_base,
    "memory": memory.memory,
    "long_recording": long_recording.long_recording,
    "disk_bytes": disk.disk_bytes,
    "encoding": encoding.encoding,
    "open_warehouse": open_bench.open_warehouse,
    "kmeans": kmeans.kmeans,
    "analyze_memory": analyze_memory.analyze_memory,
    "analyze_intervals": analyze_intervals.analyze_intervals,
    "reduce": reduce.reduce_maps,
}

PLANS = {
    # sklearn with fairseq's settings costs ~20 k-means++ seedings of min(n, 30,000) points, so its
    # time grows with n up to 30,000; n = 10,000 keeps the full run short (times: bench/README.md)
    "full": Plan(
        repeats=3,
        extract={"extract_default": ExtractCase("default", 56, 14, "all"),  # ~118 s of audio, 4 shards
                 "extract_base": ExtractCase("base", 48, 12, "all")},  # ~100 s of audio, 4 shards
        memory_utterances=6, memory_shard_size=2,  # 3 shards (~12 s); x10: 30 shards (~118 s)
        kmeans_points=10_000, kmeans_dim=768, kmeans_k=100, assign_points=200_000,
        disk_utterances=64, analyze_utterances=64, reduce_points=50_000,
        # issue 12's corpus: the embedded 240 utterances four times over (960, 0.56 h); base geometry on
        # 2 cores runs ~5x slower than the default model (~6 min a side on 0.56 h), so it runs that corpus
        # once and the 8.4-minute corpus (240 utterances) `repeats` times
        loop={"default_0.56h": loop.LoopCase("default", 960, 0.9, ">= 0.5 h, default model"),
              "base_0.56h": loop.LoopCase("base", 960, 0.9, ">= 0.5 h, wav2vec2-base geometry", repeats=1),
              "base_8min": loop.LoopCase("base", 240, 1.0, ">= 5 min, wav2vec2-base geometry"),
              "default_8min": loop.LoopCase("default", 240, 1.0, ">= 5 min, never slower")}),
    "quick": Plan(
        repeats=3,
        extract={"extract_default": ExtractCase("default", 8, 4, "all"),
                 "extract_base": ExtractCase("base", 3, 1, "all")},
        memory_utterances=3, memory_shard_size=1,
        kmeans_points=2_000, kmeans_dim=256, kmeans_k=100, assign_points=50_000,  # D of the default model
        disk_utterances=16, analyze_utterances=32, reduce_points=5_000,
        long_recording_minutes=(1, 10),  # reported, not checked: no step starts at 10 min
        loop={"default_1min": loop.LoopCase("default", 32, 1.0, "quick: 1 min, not a target corpus"),
              "base_20s": loop.LoopCase("base", 8, 1.0, "quick: 20 s, not a target corpus")}),
}


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
    p.add_argument("--quick", action="store_true", help="smaller sizes (the quick plan); times: bench/README.md")
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
    OpenMP runtimes and two OpenBLAS builds share the cores)."""
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
