"""`analyze_intervals`: what issue 14's measures add to `analyze` on the embedded run (the target:
intervals and CCA add at most 50 %, i.e. with / without <= 1.5, with the default `--seeds 1`).
The target is checked on process CPU time (every thread of this process: analyze runs in it), which
the neighbours on a shared machine do not move; wall time is reported beside it.

One run of the embedded corpus (every utterance in the full plan, `analyze_utterances` in the quick
one), every layer; `analyze` with its defaults (speaker-bootstrap intervals of every metric, the
paired differences of adjacent layers, cca_phone / cca_word / cca_mel) against `--no-intervals
--no-cca`, in this process, alternating, `repeats` times; the figure is the median of the per-repeat
ratios. The commit records say where the
added time goes: `intervals_s` (bootstrap of the contingency tables and the probe) per layer, and the
CCA commits' `seconds`.
"""

from __future__ import annotations

from bench.common import Context, check, check_line, median, timed

LAYERS = "all"
K = 50


def _extract(ctx: Context, run: str, utterances: int | None) -> int:
    from pipeline.stages.extract import ExtractConfig, extract

    cfg = ExtractConfig(run=run, warehouse=str(ctx.warehouse), layers=LAYERS, overwrite=True, progress=False,
                        **({"limit": utterances} if utterances else {}))
    return extract(cfg).frames


def _parts(ctx: Context, run: str) -> dict:
    """Seconds the last full analysis spent on intervals (per layer, summed) and on CCA, from its commits."""
    from pipeline.warehouse import Warehouse, keys

    out = {"intervals_s": 0.0, "cca_s": 0.0}
    for (_, stage, _), rec in Warehouse(ctx.warehouse).commit_records(run).items():
        key = keys.parse_analyze(stage)
        if key is None or key.by is not None:
            continue
        if key.k == 0:
            out["cca_s"] += float(rec.get("seconds") or 0.0)
        else:
            out["intervals_s"] += float(rec.get("intervals_s") or 0.0)
    return {k: round(v, 2) for k, v in out.items()}


def analyze_intervals(ctx: Context) -> dict:
    from pipeline.stages.analyze import AnalyzeConfig, analyze

    run = "analyze_intervals"
    full_plan = ctx.plan.analyze_utterances >= 64
    frames = _extract(ctx, run, None if full_plan else ctx.plan.analyze_utterances)
    base = dict(run=run, warehouse=str(ctx.warehouse), layers=LAYERS, k=K)
    walls, cpus, parts = {"with": [], "without": []}, {"with": [], "without": []}, {}
    for _ in range(ctx.plan.repeats):
        for side, extra in (("without", {"intervals": False, "cca": False}), ("with", {})):
            wall, cpu, _ = timed(analyze, AnalyzeConfig(**base, **extra))
            walls[side].append(wall)
            cpus[side].append(cpu)
            if side == "with":
                parts = _parts(ctx, run)
    ratios = [w / wo for w, wo in zip(walls["with"], walls["without"])]
    cpu_ratios = [w / wo for w, wo in zip(cpus["with"], cpus["without"])]
    ratio = median(ratios)
    result = {"frames_all_layers": frames, "layers": LAYERS, "k": K, "repeats": ctx.plan.repeats,
              "wall_s": walls, "cpu_s": cpus, "ratio_with_to_without": ratio, "cpu_ratio": median(cpu_ratios),
              "last_parts_s": parts,
              "checks": [check("analyze with intervals and CCA / without (CPU time, median)", median(cpu_ratios),
                               "<=", 1.5)]}
    result["summary"] = [
        f"python -m pipeline analyze --k {K} on the embedded run ({'every utterance' if full_plan else f'{ctx.plan.analyze_utterances} utterances'}, "
        f"layers {LAYERS}, {frames:,d} frames × layers), default intervals and CCA against --no-intervals --no-cca",
        f"  without: {median(cpus['without']):.1f} s  with: {median(cpus['with']):.1f} s CPU (median of "
        f"{ctx.plan.repeats}); wall {median(walls['without']):.1f} s and {median(walls['with']):.1f} s, ratio {ratio:.2f}",
        f"  of which bootstrap intervals {parts.get('intervals_s', 0):.1f} s, CCA {parts.get('cca_s', 0):.1f} s (last run)",
        f"  with / without (CPU) = {median(cpu_ratios):.3f}",
        *map(check_line, result["checks"]),
    ]
    return result


if __name__ == "__main__":  # python -m bench.analyze_intervals [--quick]: this benchmark alone, in a scratch folder
    import sys
    import tempfile
    from pathlib import Path

    from bench.run import PLANS

    with tempfile.TemporaryDirectory() as tmp:
        out = analyze_intervals(Context(PLANS["quick" if "--quick" in sys.argv else "full"], Path(tmp), "embedded"))
    print("\n".join(out["summary"]))
