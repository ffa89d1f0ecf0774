"""Peak memory of `extract` on one long recording, against its length.

One silent recording of 1, 10 and 60 minutes (FLAC in a one-row Hub-style Parquet), extracted by
`python -m pipeline extract` with the default model and every layer, one fresh process per length.
Layer outputs must not accumulate: what peak memory may gain per minute of audio is at most twice
the decoded float32 samples (the waveform and one normalised copy: 3.84 MB per minute, 2 x = 7.7 MB
per minute, 460 MB per hour).

The target is checked on steps from a recording of at least STEADY_MINUTES (10 -> 60 min): one of
1 min runs in two windows of 32 s, a longer one in windows of 34 s (30 s plus 2 s of context on
both sides), and its Parquet writers and the heap reach their steady size over the first windows:
a fixed step, not growth with length. Shorter steps (1 -> 10 min, `--quick`) are reported only.

Peak RSS is the child's own VmHWM read at its exit, not ru_maxrss: a child started from this
process inherits this process's high-water mark in ru_maxrss across exec, and psutil is not a
dependency. `python -m bench.run --only long_recording` runs it with the plan's lengths; alone:
`python -m bench.long_recording --minutes 1 10`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import QUIET_ENV, REPO, Context, check, check_line
from bench.data import RATE_HZ
from bench.memory import PEAK_WRAPPER

MINUTES = (1, 10, 60)
SAMPLES_MB_PER_MIN = RATE_HZ * 60 * 4 / 1e6  # decoded float32 samples: 3.84 MB per minute
TARGET_RATIO = 2.0  # growth per minute / decoded float32 samples per minute
STEADY_MINUTES = 10  # 20 windows: full-size windows, writers and allocators at their steady state


def silent_corpus(folder: Path, minutes: int) -> Path:
    """A one-row Hub-style Parquet: id `silence-<m>min`, FLAC bytes of `minutes` of digital silence."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    path = folder / f"silence-{minutes}min.parquet"
    if path.exists():
        return path
    buf = io.BytesIO()
    block = np.zeros(RATE_HZ * 60, np.int16)
    with sf.SoundFile(buf, "w", RATE_HZ, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(minutes):  # one minute at a time: this process stays small too
            f.write(block)
    row = {"id": f"silence-{minutes}min", "audio": {"bytes": buf.getvalue(), "path": None}, "text": None}
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist([row]), tmp)
    os.replace(tmp, path)
    return path


def peak_rss_mb(args: list[str], log: Path) -> tuple[float, float]:
    """(peak RSS MB, wall s) of `python -m pipeline ARGS` in a fresh process."""
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if done.returncode:
        raise RuntimeError(f"python -m pipeline {' '.join(args)} exited {done.returncode}; see {log}:\n{text[-2000:]}")
    kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("BENCH_VMHWM_KB"))
    return kb / 1024, wall


def run(scratch: Path, minutes: tuple[int, ...] = MINUTES) -> dict:
    """Peak RSS per length; growth per minute between consecutive lengths against the target."""
    from pipeline.model import default_model_path, ensure_default_model

    wh = scratch / "wh_long_recording"
    ensure_default_model(default_model_path(wh / "_models"))  # built once, outside the measured runs
    runs = {}
    for m in sorted(minutes):
        corpus = silent_corpus(scratch, m)
        args = ["extract", "--format", "hf", "--corpus", str(corpus), "--run", f"long_{m}min", "--warehouse",
                str(wh), "--model", "default", "--layers", "all", "--no-progress", "--overwrite"]
        peak, wall = peak_rss_mb(args, scratch / f"long_{m}min.log")
        runs[m] = {"peak_rss_mb": peak, "wall_s": wall, "audio_s_per_s": m * 60 / wall}
    checks, steps = [], []
    lengths = sorted(runs)
    for a, b in zip(lengths, lengths[1:]):
        per_min = (runs[b]["peak_rss_mb"] - runs[a]["peak_rss_mb"]) / (b - a)
        ratio = per_min / SAMPLES_MB_PER_MIN
        steps.append({"from_min": a, "to_min": b, "mb_per_min": per_min, "ratio_to_samples": ratio,
                      "checked": a >= STEADY_MINUTES})
        if a >= STEADY_MINUTES:
            checks.append(check(f"peak RSS growth {a}->{b} min / decoded float32 samples", ratio, "<=", TARGET_RATIO))
    result = {"model": "default", "layers": "all", "runs": {f"{m} min": r for m, r in runs.items()},
              "growth": steps, "samples_mb_per_min": SAMPLES_MB_PER_MIN, "checks": checks}
    result["summary"] = [
        "python -m pipeline extract, one silent recording, default model, all layers, a fresh process each",
        *(f"  {m:3d} min  peak RSS {r['peak_rss_mb']:7.1f} MB  {r['wall_s']:6.1f} s "
          f"({r['audio_s_per_s']:.0f}x real time)" for m, r in runs.items()),
        *(f"  {s['from_min']}->{s['to_min']} min: {s['mb_per_min']:+.2f} MB per minute = {s['ratio_to_samples']:.2f}x "
          f"the decoded float32 samples ({SAMPLES_MB_PER_MIN:.2f} MB per minute)"
          f"{'' if s['checked'] else ' (not checked: includes the fixed step to full-size windows)'}" for s in steps),
        *map(check_line, checks),
    ]
    return result


def long_recording(ctx: Context) -> dict:
    """The benchmark as bench.run runs it: the plan's lengths in its scratch folder."""
    return run(ctx.tmp, ctx.plan.long_recording_minutes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.long_recording", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, nargs="+", default=list(MINUTES), help="recording lengths")
    p.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-long-"))
    scratch.mkdir(parents=True, exist_ok=True)
    result = run(scratch, tuple(args.minutes))
    print("\n".join(result["summary"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(c["met"] for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
