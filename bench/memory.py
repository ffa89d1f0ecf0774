"""`memory`: peak RSS of `python -m pipeline extract` on a corpus, on it ten times over (new ids),
and with `--limit 0` (the startup baseline). `peak_rss` is the measurement `analyze_memory` uses
too, and PEAK_WRAPPER the one of `long_recording`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import QUIET_ENV, REPO, Context, check, check_line


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


def peak_rss(args: list[str], log: Path) -> dict:
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
                      **peak_rss([*cmd, "--corpus", str(corpus), "--run", run, *extra], ctx.tmp / f"{run}.log")}
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
