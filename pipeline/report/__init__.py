"""Stage 5: one self-contained HTML report (works offline) + one PNG and one Vega-Lite spec per chart.

    <out>/index.html            every chart and the metric table; Vega, Vega-Lite and Vega-Embed inlined
    <out>/png/<figure>.png      each chart rendered by vl-convert (no browser needed)
    <out>/specs/<figure>.vl.json
    <out>/report.json           what was drawn: each figure's query, parameters, frames; what is missing; timings

The report reads the warehouse and writes nothing to it. Its maps are the committed reductions
(`python -m pipeline reduce`): PCA of every layer, t-SNE and UMAP of three layers per run (the CNN
output, the middle and the last layer). With two runs or more, the "Model against model" section
shows the committed comparison (`python -m pipeline compare`: linear CKA of every pair of layers,
agreement of the clusterings) of the first run with each other one. What is not committed is left
out, and the page (top and section) and one logged line name the command that makes it;
`recompute=True` (`--recompute`) runs `reduce` and `compare` first, `compare_n` (`--compare-n`)
runs the missing or stale comparisons first, each run logged.

Sections that need a later stage appear only when its table holds rows for a report run:
"Variants and groups" (`group_metrics`, from `analyze --by ATTRIBUTE`) and "Transcripts and
transcriber disagreement" (`decoded`, `frame_disagreement`, from `transcripts`; the maps then get a
row coloured by the number of disagreeing references). Labels are those of `tier`: `phone` or
`word` (columns of `frames`) or any `segments` tier of every run (e.g. ctc_greedy); the clusterings
shown (maps, contingency, agreement, decoding) are the k-means `analyze` trained for that tier.

Uncertainty (issue 14): the per-layer metric and CCA curves (`cca_phone`, `cca_word`, `cca_mel`: the
`metrics` rows with k = 0) are drawn over the band of their 95 % interval (`ci_low`..`ci_high`), with
one sentence under each chart on how to read it and a list of what has no interval or value and why
(`null_reason`); the metric table prints each interval under its value; "Paired differences" shows
`metric_differences` (adjacent layers, and one layer of two runs) as "layer 4 > layer 3: yes / no at
95 %" with the difference and its interval. Warehouses written before these columns and that table
existed still give the whole report, without bands or table (the queries read missing columns as null).
"""

from __future__ import annotations

import html
import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import altair as alt

from pipeline.report import charts
from pipeline.sql import query
from pipeline.stages.compare import analysed, check_comparable, compare
from pipeline.stages.inputs import extracted_facts, require_tier
from pipeline.stages.reduce import METHODS, reduce
from pipeline.warehouse import Warehouse, keys
from pipeline.warehouse.schemas import check_tier_name

log = logging.getLogger(__name__)

PREFERRED_RULE = "gap"  # the disagreement rule the maps colour when a run has several


@dataclass
class Section:
    title: str
    figures: list[charts.Figure]
    intro: str = ""
    html: str = ""  # drawn after the figures (a table)
    tables: list[dict] = field(default_factory=list)  # what `html` shows: {name, query, params, rows}


def key_layers(layers: Sequence[int]) -> list[int]:
    """The CNN output (or first layer, the log-mel layer -2 only if alone), the middle transformer layer and
    the last layer."""
    layers = sorted(layers)
    transformer = [l for l in layers if l >= 1] or layers
    first = [l for l in layers if l >= -1] or layers
    picks = [first[0], transformer[(len(transformer) - 1) // 2], layers[-1]]
    return sorted(set(picks), key=picks.index)


def _committed_reductions(wh: Warehouse, run: str) -> set[tuple[int, str]]:
    have = set()
    for (_, stage, shard) in wh.commits(run):
        method = keys.parse_reduce(stage)
        if method is not None:
            have.add((keys.shard_layer(shard), method))
    return have


def _layers_arg(layers: Sequence[int], all_layers: Sequence[int]) -> str:
    return "" if sorted(layers) == sorted(all_layers) else f" --layers={','.join(map(str, sorted(layers)))}"


def _warehouse_arg(warehouse: str) -> str:
    return "" if str(warehouse) == "storage" else f" --warehouse {shlex.quote(str(warehouse))}"


def missing_reductions(wh: Warehouse, warehouse: str, plan: dict[str, dict[str, list[int]]],
                       layers: dict[str, list[int]], tier: str = "phone", seed: int = 0) -> list[dict]:
    """The reductions of `plan` ({run: {method: [layers]}}) not committed yet, as
    [{run, method, layers, command}]: the `reduce` command that makes them (one per run and layer set)."""
    out = []
    for run, methods in plan.items():
        have = _committed_reductions(wh, run)
        by_layers: dict[tuple[int, ...], list[str]] = {}
        for method, wanted in methods.items():
            lacking = tuple(layer for layer in wanted if (layer, method) not in have)
            if lacking:
                by_layers.setdefault(lacking, []).append(method)
        for lacking, names in by_layers.items():
            command = (f"python -m pipeline reduce --run {run}{_layers_arg(lacking, layers[run])} "
                       f"--methods {','.join(names)}" + ("" if tier == "phone" else f" --tier {tier}")
                       + ("" if seed == 0 else f" --seed {seed}") + _warehouse_arg(warehouse))
            out += [{"run": run, "method": m, "layers": list(lacking), "command": command} for m in names]
    return out


def run_reductions(wh: Warehouse, plan: dict[str, dict[str, list[int]]], n: int, seed: int,
                   tier: str = "phone") -> list[dict]:
    """`reduce` every entry of `plan` ({run: {method: [layers]}}) on a sample balanced over the labels
    of `tier`, replacing committed reductions (what `--recompute` asks for), each one logged."""
    done = []
    for run, methods in plan.items():
        for method, layers in methods.items():
            log.warning("report --recompute: running `reduce --run %s --layers=%s --methods %s --n %d --seed %d "
                        "--tier %s`", run, ",".join(map(str, layers)), method, n, seed, tier)
            for layer in layers:
                info = reduce(run, layer, method, warehouse=str(wh.root), n=n, seed=seed, tier=tier)
                done.append({k: info[k] for k in ("run", "layer", "method", "rows", "total_s")})
    return done


def comparison_state(wh: Warehouse, run: str, other: str, k: int | None) -> str:
    """'current': a committed `compare` of (run, other) with this k, newer than both runs' frames and
    clusters; 'stale': one that is not; 'missing': none."""
    done = [rec for (_, stage, _), rec in wh.commits(run).items() if stage == keys.compare_stage(other)]
    if not done:
        return "missing"
    inputs = [rec["time"] for r in {run, other} for (_, stage, _), rec in wh.commits(r).items()
              if keys.kind(stage) in (keys.EXTRACT, keys.ANALYZE)]
    return "current" if done[0].get("k") == k and all(t <= done[0]["time"] for t in inputs) else "stale"


def plan_comparisons(wh: Warehouse, warehouse: str, runs: Sequence[str], k: int | None = None) -> dict[str, dict]:
    """Per other run: {k, state, command} of its comparison with the first run (k: the clustering to
    compare when both runs have it, else the largest k both have), or {refused: why} when the two
    cannot be compared (no shared utterances, other frame geometry). Reads only."""
    con = wh.connect()
    out = {}
    for other in runs[1:]:
        try:
            check_comparable(wh, runs[0], other, con)
        except ValueError as err:
            out[other] = {"refused": str(err)}
            continue
        ks = set(analysed(wh, runs[0])) & set(analysed(wh, other))
        pair_k = k if k in ks else max(ks, default=None)
        out[other] = {"k": pair_k, "state": comparison_state(wh, runs[0], other, pair_k),
                      "command": f"python -m pipeline compare --runs {runs[0]},{other}"
                                 + (f" --k {pair_k}" if pair_k is not None and pair_k != max(ks, default=None) else "")
                                 + _warehouse_arg(warehouse)}
    return out


def run_comparisons(wh: Warehouse, runs: Sequence[str], pairs: dict[str, dict], n: int | None, seed: int,
                    every: bool) -> list[dict]:
    """`compare` the first run with each comparable other run (`every`: all of them; else those whose
    comparison is missing or stale) on n frames (None: compare's default), each one logged: what
    `--recompute` and `--compare-n` ask for."""
    done = []
    for other, pair in pairs.items():
        if "refused" in pair or (pair["state"] == "current" and not every):
            continue
        sample = {} if n is None else {"n": n}
        log.warning("report: running `compare --runs %s,%s%s --seed %d%s`", runs[0], other,
                    "" if n is None else f" --n {n}", seed, "" if pair["k"] is None else f" --k {pair['k']}")
        info = compare((runs[0], other), warehouse=str(wh.root), seed=seed, k=pair["k"], **sample)
        pair["state"] = "current"
        done.append({key: info[key] for key in ("run", "other", "frames", "k", "total_s")})
    return done


def disagreement_rules(counts) -> dict[str, str]:
    """Per run with `frame_disagreement` rows: the rule its maps colour (PREFERRED_RULE if present)."""
    rules: dict[str, set] = {}
    for r in counts.to_pylist():
        rules.setdefault(r["run"], set()).add(r["rule"])
    return {run: PREFERRED_RULE if PREFERRED_RULE in have else min(have) for run, have in rules.items()}


def build_report(runs: Sequence[str] | str, warehouse: str = "storage", out: str = "storage/report",
                 k: int | None = None, methods: Sequence[str] = METHODS, map_points: int = 2000,
                 top_n: int = 15, seed: int = 0, tier: str = "phone", recompute: bool = False,
                 png: bool = True, compare_n: int | None = None) -> Path:
    """Build `<out>/index.html` (+ PNGs) for one or more runs; returns the HTML's path.

    Draws what the warehouse holds and writes nothing to it: a map whose reduction is not committed,
    or a comparison not made, is left out, and the page (and one logged line) names the `reduce` or
    `compare` command that makes it.
    k: the k-means run to show (default: the largest k analysed for every run).
    tier: the labels: phone, word, or a `segments` tier every run has (e.g. ctc_greedy).
    map_points: frames per map (and the sample size of the reductions `recompute` makes).
    recompute: first run `reduce` for every map (replacing committed reductions) and `compare` for
        every pair of runs, logging each: the stages run explicitly, before drawing.
    compare_n: first run `compare` on this many frames for each pair of runs whose comparison is
        missing or stale (None: draw the comparisons committed).
    """
    t0 = time.perf_counter()
    check_tier_name(tier)
    runs = [runs] if isinstance(runs, str) else list(runs)
    runs = [r for part in runs for r in part.split(",") if r]
    wh = Warehouse(warehouse)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown reduction method(s) {unknown}: use some of {', '.join(METHODS)}")
    layers = {run: sorted(extracted_facts(wh, run)["layers"]) for run in runs}
    require_tier(wh, runs, tier)
    keys = {run: key_layers(layers[run]) for run in runs}
    plan = {run: {m: (layers[run] if m == "pca" else keys[run]) for m in methods} for run in runs}
    reduced = run_reductions(wh, plan, map_points, seed, tier) if recompute else []
    t_reduce = time.perf_counter() - t0
    lacking = missing_reductions(wh, warehouse, plan, layers, tier, seed)
    have = {run: _committed_reductions(wh, run) for run in runs}

    def drawable(panels, method: str) -> bool:
        return all((layer, method) in have[run] for run, layer in panels)

    con = charts.connect(wh.root)
    table, table_params = charts.metric_table(con, runs, tier=tier)
    ks_by_run = {run: {r["k"] for r in table.to_pylist() if r["run"] == run} for run in runs}
    common = set.intersection(*ks_by_run.values()) if ks_by_run else set()
    if k is None:
        k = max(common) if common else max(set().union(*ks_by_run.values()), default=None)
    sections = []
    cca = charts.cca_curves(con, runs, tier=tier)
    if table.num_rows or cca.data.num_rows:
        figs = [charts.metric_curves(con, runs, tier=tier)] if table.num_rows else []
        sections.append(Section("Clustering metrics by layer", figs + ([cca] if cca.data.num_rows else []),
                                intro=f"How well k-means clusters of each layer agree with the {tier} labels, how "
                                      f"well a linear probe reads the {tier} off the layer, and (CCA) how much of "
                                      "the layer is linearly shared with phone, word and log-mel targets."
                                      + ("" if cca.data.num_rows else " No CCA measures in the warehouse yet: "
                                         "`python -m pipeline analyze` of this version writes them.")))
    differences = differences_section(con, runs, tier)
    if differences is not None:
        sections.append(differences)
    disagreement = charts.disagreement_bars(con, runs)
    rules = disagreement_rules(disagreement.data)
    colourings = ("phone_class", "label", "speaker") + (("cluster",) if k is not None else ()) + (
        "disagreement", "metadata")
    k_arg = k if k is not None else -1
    for run in runs:
        rule = rules.get(run, "")
        panels = [(run, l) for l in keys[run]]
        figs = [charts.map_grid(con, panels, m, k_arg, n_points=map_points, top_n=top_n, seed=seed,
                                colourings=colourings, tier=tier, rule=rule) for m in methods if drawable(panels, m)]
        every = [(run, l) for l in layers[run]]
        if "pca" in methods and len(layers[run]) > len(keys[run]) and drawable(every, "pca"):
            figs.append(charts.map_grid(con, every, "pca", k_arg,
                                        n_points=min(map_points, 1500), top_n=top_n, seed=seed,
                                        colourings=("phone_class", "disagreement"), name=f"map_pca_all_layers_{run}",
                                        title=f"PCA of every layer: {run}", panel_size=150, tier=tier, rule=rule))
        sections.append(Section(f"Maps of {run}: {' | '.join(charts.layer_name(l) for l in keys[run])}", figs,
                                intro=_reduction_notes([m for m in lacking if m["run"] == run])))
    if len(runs) > 1:
        panels = [(runs[0], keys[runs[0]][0])] + [(r, layers[r][-1]) for r in runs]
        figs = [charts.map_grid(con, panels, m, k_arg, n_points=map_points, top_n=top_n, seed=seed,
                                colourings=colourings, name=f"map_{m}_runs", tier=tier, rule=rules.get(runs[0], ""))
                for m in methods if drawable(panels, m)]
        unmapped = [charts.METHOD_NAMES[m] for m in methods if not drawable(panels, m)]
        sections.append(Section("Runs side by side", figs,
                                intro="The original's 'CNN | pre-trained | fine-tuned' figure: the first run's "
                                      "CNN output, then the last layer of every run, on the same frames."
                                      + (f" Not drawn ({', '.join(unmapped)}): its reductions are missing, see the "
                                         "maps of each run above." if unmapped else "")))
        t1 = time.perf_counter()
        pairs = plan_comparisons(wh, warehouse, runs, k)
        compared = (run_comparisons(wh, runs, pairs, compare_n, seed, every=recompute)
                    if recompute or compare_n is not None else [])
        t_compare = time.perf_counter() - t1
        if compared:
            con = charts.connect(wh.root)  # the views now include the new comparison files
        sections.append(comparison_section(con, runs[0], pairs, tier))
    else:
        pairs, compared, t_compare = {}, [], 0.0
    refused = {other: pair["refused"] for other, pair in pairs.items() if "refused" in pair}
    if k is not None:
        heat = [charts.contingency_heatmap(con, run, k, keys[run], tier=tier) for run in runs if k in ks_by_run[run]]
        if heat:
            sections.append(Section("Phones and clusters" if tier == "phone" else f"{tier} labels and clusters", heat))
        groups = [charts.group_curves(con, g["run"], k, g["attribute"], tier=tier)
                  for g in charts.group_attributes(con, runs, k, tier)]
        if groups:
            sections.append(Section("Variants and groups", groups, intro=(
                "Per utterance attribute scored by `analyze --by` (dialect, gender, speaker, …): is the layer's "
                f"{tier} structure the same in every group, and does a clustering or a probe fitted on the other "
                "groups work on this one as well as one fitted on the group itself?")))
    sections += transcript_sections(con, runs, disagreement, rules, tier)
    commands = list(dict.fromkeys([m["command"] for m in lacking]
                                  + [p["command"] for p in pairs.values() if p.get("state") in ("missing", "stale")]))
    if commands:
        log.warning("report for %s: %d command(s) would complete it: %s", ",".join(runs), len(commands),
                    "; ".join(commands))
    overview = query(None, "run_overview", {}, con=con)
    intervals = charts.metric_intervals(con, runs, [c for c in table.column_names if c not in
                                                    ("run", "k", "layer", "n_frames")], tier=tier)
    path = write_report(Path(out), runs, sections, table, overview, png=png, todo=commands, intervals=intervals,
                        facts={"k": k, "tier": tier, "map_points": map_points, "seed": seed, "top_n": top_n,
                               "warehouse": str(wh.root), "reductions_computed": reduced,
                               "reduce_s": round(t_reduce, 1), "comparisons_computed": compared,
                               "comparisons_refused": refused, "compare_s": round(t_compare, 1),
                               "compare_n": compare_n, "missing_reductions": lacking,
                               "comparisons": pairs, "commands": commands})
    log.info("report for %s in %.1f s: %s", runs, time.perf_counter() - t0, path)
    return path


def _reduction_notes(lacking: list[dict]) -> str:
    """One sentence per missing reduction command: which maps it draws."""
    by_command: dict[str, list[dict]] = {}
    for m in lacking:
        by_command.setdefault(m["command"], []).append(m)
    return " ".join(
        f"Not reduced yet ({', '.join(charts.METHOD_NAMES[m['method']] for m in group)} of "
        f"{', '.join(charts.layer_name(l) for l in group[0]['layers'])}): run `{command}`."
        for command, group in by_command.items())


def differences_section(con, runs: Sequence[str], tier: str = "phone") -> Section | None:
    """"Paired differences": per run, adjacent layers (from `analyze`), and per pair of runs, the same layer
    (from `compare`), one table each: the claim in the direction of the difference ('layer 4 > layer 3'),
    whether it holds at 95 %, the difference and its paired-bootstrap interval. None when the warehouse has
    no `metric_differences` table or no row of these runs."""
    found = charts.metric_differences(con, runs, tier)
    if found is None or not found[0].num_rows:
        return None
    table, params = found
    rows = table.to_pylist()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["other_run"]), []).append(r)
    parts = [_differences_html(run, other, group) for (run, other), group in groups.items()]
    intro = ("Is one layer (or run) really above the other? For each metric, the difference of the two values on "
             "the same frames with its 95 % interval from a paired bootstrap (the same resampled speakers for "
             "both): 'yes' when the interval excludes 0, so the difference is larger than resampling noise; 'no' "
             "when the interval includes 0 (no claim either way). Adjacent layers come from `analyze`, the same "
             "layer of two runs from `compare`.")
    parts.append(f"<p class='caption'>Data: <code>sql/report_metric_differences.sql</code> with "
                 f"{html.escape(json.dumps(params))}; every metric is in the table "
                 "<code>metric_differences</code>.</p>")
    return Section("Paired differences", [], intro=intro, html="\n".join(parts), tables=[{
        "name": "metric_differences", "query": "report_metric_differences", "params": params,
        "rows": table.num_rows, "significant": sum(r["at_95"] == "yes" for r in rows),
        "without_interval": sum(r["at_95"] is None for r in rows)}])


def _number(v, signed: bool = False) -> str:
    return "" if v is None else f"{v:+.4f}" if signed else f"{v:.4f}"


def _differences_html(run: str, other: str, rows: list[dict]) -> str:
    """One collapsible table of paired differences (`report_metric_differences` rows of one run pair)."""
    title = f"{run}: adjacent layers" if run == other else f"{run} against {other}: the same layer"
    held = sum(r["at_95"] == "yes" for r in rows)
    head = ["metric", "k", "claim", "at 95 %", "difference (left − right)", "95 % interval", "values (left, right)",
            "interval method", "note"]
    body = []
    for r in rows:
        verdict = r["at_95"] or "—"
        interval = ("" if r["claim_ci_low"] is None or r["claim_ci_high"] is None
                    else f"[{_number(r['claim_ci_low'], True)}, {_number(r['claim_ci_high'], True)}]")
        left, right = (r["other_value"], r["value"]) if (r["diff"] or 0) < 0 else (r["value"], r["other_value"])
        values = "" if left is None or right is None else f"{_number(left)}, {_number(right)}"
        method = " ".join(str(x) for x in (r["ci_method"], r["n_resamples"] and f"({r['n_resamples']} resamples)")
                          if x)
        cells = [r["metric"], "" if not r["k"] else str(r["k"]), r["claim"] or "", verdict,
                 _number(r["claim_diff"], True), interval, values, method, r["null_reason"] or ""]
        cls = {"yes": " class='yes'", "no": " class='no'"}.get(r["at_95"], " class='none'")
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<details class='differences' open><summary>{html.escape(title)}: {held} of {len(rows)} differences "
            "hold at 95 %</summary><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table></details>")


def comparison_section(con, run: str, pairs: dict[str, dict], tier: str = "phone") -> Section:
    """"Model against model": CKA heatmaps and agreement curves of the committed comparisons, and a note
    for each other run that is not compared (why, or the command that compares it)."""
    others = [other for other, pair in pairs.items() if pair.get("state") in ("current", "stale")]
    figs = [charts.cka_heatmap(con, run, other) for other in others]
    if others:
        figs.append(charts.agreement_curves(con, run, others, tier=tier))
    intro = (f"{run} against {', '.join(others)} on the same frames: linear CKA between every pair of "
             "layers, and per layer how far the k-means clusterings of the two runs agree." if others else "")
    for other, pair in pairs.items():
        if "refused" in pair:
            intro += f" Not compared with {other}: {pair['refused']}"
        elif pair["state"] == "missing":
            intro += f" Not compared with {other} yet: run `{pair['command']}`."
        elif pair["state"] == "stale":
            intro += (f" The comparison with {other} predates the latest extract or analyze of a run (or used "
                      f"another k): rerun `{pair['command']}`.")
    return Section("Model against model", figs, intro=intro.strip())


def transcript_sections(con, runs: Sequence[str], disagreement: charts.Figure, rules: dict[str, str],
                        tier: str = "phone") -> list[Section]:
    """The "Transcripts and transcriber disagreement" section, when `transcripts` wrote rows for a run."""
    figs = []
    cer = charts.decoded_cer_curves(con, runs, tier)
    if cer.data.num_rows:
        figs.append(cer)
    if disagreement.data.num_rows:
        figs.append(disagreement)
    if not figs:
        return []
    maps = "; ".join(f"{run}: rule '{rule}'" for run, rule in rules.items())
    intro = ("How much of the transcript the clusters carry (decoding every frame as its cluster's majority "
             "greedy CTC label), and where human reference transcripts disagree with the model (the original "
             "study's transcriber-disagreement analysis)."
             + (f" The maps above have a row coloured by the number of disagreeing references ({maps})." if maps
                else ""))
    return [Section("Transcripts and transcriber disagreement", figs, intro=intro)]


# ------------------------------------------------------------------------------------------- writing
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; }} h3 {{ font-size: 1.05em; }}
table {{ border-collapse: collapse; font-size: 12px; margin: .5em 0; }}
td, th {{ padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }}
th {{ background: #f6f6f6; }} td.best {{ font-weight: bold; background: #eef5ff; }}
.figure {{ margin: 1em 0 2em; }} .caption {{ color: #555; font-size: 12px; max-width: 900px; }}
small.ci {{ color: #777; font-size: 10px; }} details.differences {{ margin: .6em 0; }}
tr.yes td {{ background: #eaf6ea; }} tr.none td {{ color: #888; }}
.chart {{ overflow-x: auto; }} .err {{ color: #b00; }} .todo {{ color: #8a5a00; }} nav a {{ margin-right: 1em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="caption">{subtitle}</p>
<nav>{nav}</nav>
{body}
<script type="application/json" id="vl-specs">{specs}</script>
<script>{bundle}</script>
<script>
const specs = JSON.parse(document.getElementById("vl-specs").textContent);
let rendered = 0, failed = 0;
window.reportViews = {{}};
window.reportReady = Promise.all(Object.entries(specs).map(([id, spec]) =>
  vegaEmbed("#" + id, spec, {{renderer: "svg", actions: false}}).then((result) => {{
    window.reportViews[id] = result.view; rendered += 1;
  }}).catch((err) => {{
    failed += 1; console.error("chart " + id + " failed: " + err);
    const el = document.getElementById(id); el.className += " err"; el.textContent = "chart failed: " + err;
  }}))).then(() => {{ document.body.dataset.rendered = rendered; document.body.dataset.failed = failed; }});
</script>
</body></html>
"""


def _script_json(obj) -> str:
    """JSON that can sit inside a <script> element: no '</' or '<!--' in it."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _table_html(table, caption: str, intervals: dict | None = None) -> str:
    rows = table.to_pylist()
    if not rows:
        return "<p>No metrics yet: run <code>python -m pipeline analyze</code>.</p>"
    cols = table.column_names
    numeric = [c for c in cols if c not in ("run", "k", "layer", "n_frames", "probe_chance")]
    best = {}
    for c in numeric:
        for key in {(r["run"], r["k"]) for r in rows}:
            vals = [r[c] for r in rows if (r["run"], r["k"]) == key and r[c] is not None]
            if vals:
                best[(key, c)] = max(vals)
    out = [f"<p class='caption'>{html.escape(caption)}</p><table><tr>"
           + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            text = "" if v is None else f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
            ci = (intervals or {}).get((r["run"], r["k"], r["layer"], c))
            if ci is not None and v is not None:  # the 95 % interval under the value
                text += f"<br><small class='ci'>{ci[0]:.4f}–{ci[1]:.4f}</small>"
            cls = " class='best'" if c in numeric and v is not None and best.get(((r["run"], r["k"]), c)) == v else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _overview_html(overview, runs) -> str:
    rows = sorted((r for r in overview.to_pylist() if r["run"] in runs), key=lambda r: list(runs).index(r["run"]))
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, runs: Sequence[str], sections: list[Section], table, overview, png: bool = True,
                 facts: dict | None = None, todo: Sequence[str] = (), intervals: dict | None = None) -> Path:
    """Write the page, its specs and PNGs, and report.json; `todo`: the commands that would complete it;
    `intervals`: (run, k, layer, metric) -> 95 % interval, printed under the metric table's values."""
    import vl_convert as vlc

    out.mkdir(parents=True, exist_ok=True)
    (out / "png").mkdir(exist_ok=True)
    (out / "specs").mkdir(exist_ok=True)
    vl_version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    specs, body, nav, figures, tables = {}, [], [], [], []
    if todo:
        body.append("<p class='todo'>Not in the warehouse yet, so not drawn; these commands make it:</p><pre>"
                    + "\n".join(html.escape(c) for c in todo) + "</pre>")
    body.append("<h2 id='runs'>Runs</h2>" + _overview_html(overview, runs))
    body.append("<h2 id='metrics'>Metric table</h2>" + _table_html(
        table, "Bold: the best layer of each run and k for that metric (every frame scored; silhouette on a sample). "
        "Under a value, in small print: its 95 % interval (bootstrap over speakers), where the warehouse has one; "
        "bold marks the largest value, not a significant lead (the paired differences test that).", intervals))
    nav += ["<a href='#runs'>runs</a>", "<a href='#metrics'>metric table</a>"]
    for s_i, section in enumerate(sections):
        anchor = f"section-{s_i}"
        nav.append(f"<a href='#{anchor}'>{html.escape(section.title)}</a>")
        body.append(f"<h2 id='{anchor}'>{html.escape(section.title)}</h2>")
        if section.intro:
            body.append(f"<p class='caption'>{html.escape(section.intro)}</p>")
        for fig in section.figures:
            t = time.perf_counter()
            spec = fig.spec()
            div = f"fig-{fig.name}"
            specs[div] = spec
            (out / "specs" / f"{fig.name}.vl.json").write_text(json.dumps(spec))
            if png:
                (out / "png" / f"{fig.name}.png").write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version))
            body.append(f"<div class='figure'><div class='chart' id='{div}'></div>"
                        f"<p class='caption'>{html.escape(fig.caption)} Data: <code>sql/{fig.query}.sql</code> "
                        f"with {html.escape(json.dumps(fig.params))}.</p></div>")
            figures.append({"name": fig.name, "title": fig.title, "query": fig.query, "params": fig.params,
                            "rows": fig.data.num_rows, "div": div, "render_s": round(time.perf_counter() - t, 2),
                            **fig.extra})
        if section.html:
            body.append(section.html)
        tables += section.tables
    title = "wav2vec2 layers: " + ", ".join(runs)
    subtitle = (f"Built {time.strftime('%Y-%m-%d %H:%M')} from warehouse {html.escape(str((facts or {}).get('warehouse', '')))}; "
                "works offline (Vega, Vega-Lite and Vega-Embed are inlined).")
    page = PAGE.format(title=html.escape(title), subtitle=subtitle, nav="".join(nav), body="\n".join(body),
                       specs=_script_json(specs), bundle=vlc.javascript_bundle(vl_version=vl_version))
    tmp = out / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    (out / "report.json").write_text(json.dumps({"runs": list(runs), **(facts or {}), "figures": figures,
                                                 "tables": tables,
                                                 "html_bytes": len(page.encode())}, indent=1, default=str))
    return out / "index.html"


@dataclass
class ReportConfig:
    """The parameters of `report`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    runs: str = field(metadata={"help": "A or A,B"})
    warehouse: str = "storage"
    out: str = "storage/report"
    k: int | None = field(default=None, metadata={"help": "clustering to show (default: the largest k analysed)"})
    methods: str = ",".join(METHODS)
    map_points: int = 2000
    top_n: int = field(default=15, metadata={"help": "phones coloured by name; the rest are 'other'"})
    seed: int = 0
    tier: str = field(default="phone", metadata={"help": "phone, word, or a segments tier (ctc_greedy, …)"})
    recompute: bool = field(default=False, metadata={
        "help": "run `reduce` for every map and `compare` for every pair first"})
    compare_n: int | None = field(default=None, metadata={
        "help": "compare the first run with each other run on N frames first, where missing or stale (runs `compare`)"})
    png: bool = field(default=True, metadata={"flag": "--no-png"})


@dataclass
class ReportResult:
    html: Path

    def summary(self) -> str:
        return f"report: {self.html}"


def run(cfg: ReportConfig) -> ReportResult:
    return ReportResult(build_report(**{**asdict(cfg), "methods": tuple(m for m in cfg.methods.split(",") if m)}))
