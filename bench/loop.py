"""`extract_vs_loop`, `startup`: `python -m pipeline extract` against the plain loop a user would
write instead (bench/plain_loop.py), both as fresh processes on the same Hub-style Parquet corpus,
alternating, `repeats` times, medians of the per-repeat ratios; and the start-up of
`extract --limit 0` against `python -c "import torch, transformers"`.

Targets (issue 12): pipeline wall ≤ 0.9 × the loop's on a corpus of ≥ 0.5 h (default model), and
never slower (≤ 1.0 ×) on any corpus of ≥ 5 minutes; start-up ≤ 1.5 × the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import QUIET_ENV, REPO, Context, check, check_line, median


@dataclass(frozen=True)
class LoopCase:
    model: str  # "default" (embedded) or "base" (wav2vec2-base geometry, random weights)
    utterances: int  # rows of the embedded corpus (240 rows, ~2.1 s each; cycled with new ids beyond)
    target: float  # pipeline wall / loop wall must be <= this
    what: str
    repeats: int | None = None  # alternating pairs (None: the plan's)


def run_timed(cmd: list[str], env: dict | None = None) -> dict:
    """A child process's wall, user and system seconds (its own, from wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {code}: {err[-2000:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}


def model_folder(ctx: Context, model: str) -> Path:
    """The folder both sides load: the default model as the pipeline builds it, or the base model."""
    if model == "base":
        return Path(ctx.model_source("base"))
    from pipeline.model import default_model_path, ensure_default_model

    return ensure_default_model(default_model_path(ctx.warehouse / "_models"))


def pipeline_cmd(ctx: Context, model: str, corpus: Path, run: str) -> list[str]:
    source = "default" if model == "default" else str(model_folder(ctx, model))
    return [sys.executable, "-m", "pipeline", "extract", "--format", "hf", "--corpus", str(corpus),
            "--model", source, "--run", run, "--warehouse", str(ctx.warehouse), "--overwrite", "--no-progress"]


def loop_cmd(ctx: Context, model: str, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.plain_loop", "--model", str(model_folder(ctx, model)),
            "--corpus", str(corpus), "--out", str(out)]


def compare(ctx: Context, name: str, case: LoopCase) -> dict:
    corpus, audio_s = ctx.corpus(case.utterances)
    out = ctx.tmp / f"loop-{name}"
    pipe, loop = pipeline_cmd(ctx, case.model, corpus, name), loop_cmd(ctx, case.model, corpus, out)
    reps = []
    repeats = case.repeats or ctx.plan.repeats
    for r in range(repeats):
        sides = {}
        for side in (("pipeline", "loop") if r % 2 == 0 else ("loop", "pipeline")):
            shutil.rmtree(out, ignore_errors=True)
            sides[side] = run_timed(pipe if side == "pipeline" else loop)
        shutil.rmtree(out, ignore_errors=True)
        reps.append({"pipeline": sides["pipeline"], "loop": sides["loop"],
                     "ratio": sides["pipeline"]["wall_s"] / sides["loop"]["wall_s"]})
    ratio = median(r["ratio"] for r in reps)
    med = {side: {k: median(r[side][k] for r in reps) for k in ("wall_s", "user_s", "sys_s")}
           for side in ("pipeline", "loop")}
    result = {"model": case.model, "utterances": case.utterances, "audio_s": audio_s, "repeats": reps,
              "medians": med, "ratio_pipeline_over_loop": ratio,
              "checks": [check(f"{name}: pipeline / plain loop wall ({case.what})", ratio, "<=", case.target)]}
    result["summary"] = [
        f"{case.model} model, all layers, {case.utterances} utterances ({audio_s / 60:.1f} min audio), "
        f"{repeats} alternating repeat{'s' * (repeats > 1)} (medians)",
        *(f"  {side:8s} wall {m['wall_s']:.1f} s, user {m['user_s']:.1f} s, sys {m['sys_s']:.1f} s "
          f"({audio_s / m['wall_s']:.1f}x real time)" for side, m in med.items()),
        *map(check_line, result["checks"]),
    ]
    return result


def extract_vs_loop(ctx: Context) -> dict:
    """Every case of the plan's `loop` (bench.run.PLANS), one result each under "cases"."""
    model_folder(ctx, "default")  # built once, outside the timings
    cases = {name: compare(ctx, name, case) for name, case in ctx.plan.loop.items()}
    return {"cases": cases, "checks": [c for r in cases.values() for c in r["checks"]],
            "summary": [line for name, r in cases.items() for line in [f"[{name}]", *r["summary"]]]}


def startup(ctx: Context) -> dict:
    """`extract --limit 0` (imports, model load, run facts, nothing extracted) against importing torch
    and transformers, against that import with the wav2vec2 model class (what loading any wav2vec2 model
    imports), and against the plain loop's own start-up (import, `AutoModel.from_pretrained` of the same
    folder), fresh processes, alternating. A bare `import transformers` is lazy: transformers' wav2vec2
    modeling code imports torch.distributed.tensor, torch._dynamo and more (3 s here), so no program that
    loads the model, the plain loop included, starts within 1.5 x the bare import; the check is against
    the import with the model class, and the bare ratio is reported beside it."""
    corpus, _ = ctx.corpus(8)
    folder = model_folder(ctx, "default")
    cmd_extract = [*pipeline_cmd(ctx, "default", corpus, "startup"), "--limit", "0"]
    cmd_import = [sys.executable, "-c", "import torch, transformers"]
    cmd_model_import = [sys.executable, "-c", "import torch, transformers; transformers.Wav2Vec2Model"]
    cmd_loop = [sys.executable, "-c", "from transformers import AutoModel; "
                f"AutoModel.from_pretrained({str(folder)!r}).eval()"]
    commands = {"extract": cmd_extract, "import": cmd_import, "model_import": cmd_model_import, "loop_load": cmd_loop}
    for cmd in commands.values():
        run_timed(cmd)  # warm the page cache for every side
    reps = []
    for r in range(max(3, ctx.plan.repeats)):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        t = {side: run_timed(commands[side]) for side in order}
        reps.append({"extract_limit_0": t["extract"], "import": t["import"], "model_import": t["model_import"],
                     "loop_load": t["loop_load"],
                     "ratio": t["extract"]["wall_s"] / t["import"]["wall_s"],
                     "ratio_to_model_import": t["extract"]["wall_s"] / t["model_import"]["wall_s"],
                     "ratio_to_loop_load": t["extract"]["wall_s"] / t["loop_load"]["wall_s"],
                     "loop_load_to_import": t["loop_load"]["wall_s"] / t["import"]["wall_s"]})
    ratio = median(r["ratio"] for r in reps)
    ratio_model = median(r["ratio_to_model_import"] for r in reps)
    ratio_loop = median(r["ratio_to_loop_load"] for r in reps)
    loop_bare = median(r["loop_load_to_import"] for r in reps)
    ext, imp = median(r["extract_limit_0"]["wall_s"] for r in reps), median(r["import"]["wall_s"] for r in reps)
    model_imp = median(r["model_import"]["wall_s"] for r in reps)
    load = median(r["loop_load"]["wall_s"] for r in reps)
    checks = [check("start-up: extract --limit 0 / import torch, transformers + the wav2vec2 model class",
                    ratio_model, "<=", 1.5),
              check("start-up: extract --limit 0 / the plain loop's import + from_pretrained", ratio_loop, "<=", 1.5)]
    return {"repeats": reps, "extract_limit_0_s": ext, "import_s": imp, "model_import_s": model_imp,
            "loop_load_s": load, "ratio": ratio, "ratio_to_model_import": ratio_model,
            "ratio_to_loop_load": ratio_loop, "loop_load_to_import": loop_bare, "checks": checks,
            "summary": [f"  extract --limit 0 {ext:.2f} s; import torch + transformers {imp:.2f} s (ratio {ratio:.2f}; "
                        f"the plain loop's start-up against it: {loop_bare:.2f}); with the wav2vec2 model class "
                        f"{model_imp:.2f} s (ratio {ratio_model:.2f}); the plain loop's import + from_pretrained "
                        f"{load:.2f} s (ratio {ratio_loop:.2f}); medians", *map(check_line, checks)]}
