"""What every benchmark shares: the sizes of a plan, the scratch context (corpora, one warehouse,
the base model), timing, target checks, and the facts of the machine a run measured."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from bench.data import build_base_model, corpus_audio_s, embedded_rows, synthetic_rows, tile

REPO = Path(__file__).resolve().parents[1]
# transformers/datasets: no network, no progress bars (also for the extraction subprocesses)
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class ExtractCase:
    model: str  # "default" (embedded) or "base"
    utterances: int  # from the corpus (embedded: ~2.1 s each)
    shard_size: int
    layers: str


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench mode (bench.run.PLANS: full and quick)."""

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
    long_recording_minutes: tuple[int, ...] = (1, 10, 60)  # one recording each
    loop: dict = field(default_factory=dict)  # extract_vs_loop: name -> bench.loop.LoopCase


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


# ---------------------------------------------------------------- timing and targets


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


# ---------------------------------------------------------------- the machine


def machine_facts() -> dict:
    """CPU, affinity, threads, GPU, library versions, date and load: what results.json records per run."""
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
