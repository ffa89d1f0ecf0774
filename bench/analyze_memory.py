"""`analyze_memory`: whether `analyze`'s peak memory stays flat when a run has ten times the frames
(the target: 10x / 1x <= 1.1), measured in a fresh process with `bench.memory.peak_rss`."""

from __future__ import annotations

from bench.common import Context, check, check_line
from bench.memory import peak_rss


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
        out[label] = {"frames_per_layer": frames[label], **peak_rss(args, ctx.tmp / f"{run}.log")}
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
