"""Stage 5: one self-contained HTML report (works offline) + one PNG and one Vega-Lite spec per chart.

    <out>/index.html            every chart and the metric table; Vega, Vega-Lite and Vega-Embed inlined
    <out>/png/<figure>.png      each chart rendered by vl-convert (no browser needed)
    <out>/specs/<figure>.vl.json
    <out>/report.json           what was drawn: each figure's query, parameters, frames; timings

Missing reductions are computed first (`pipeline.stages.reduce`): PCA for every layer, t-SNE and UMAP for
three layers per run (the CNN output, the middle and the last layer). Reductions already committed
are taken as they are (pass recompute=True to redo them with this report's n and seed).
With two runs or more, the first is compared with each other one (`pipeline.stages.compare`: linear CKA
of every pair of layers, agreement of the clusterings) unless a comparison newer than both runs'
frames and clusters is committed; the "Model against model" section shows it.

Sections that need a later stage appear only when its table holds rows for a report run:
"Variants and groups" (`group_metrics`, from `analyze --by ATTRIBUTE`) and "Transcripts and
transcriber disagreement" (`decoded`, `frame_disagreement`, from `transcripts`; the maps then get a
row coloured by the number of disagreeing references). Labels are those of `tier`: `phone` or
`word` (columns of `frames`) or any `segments` tier of every run (e.g. ctc_greedy); the clusterings
shown (maps, contingency, agreement, decoding) are the k-means `analyze` trained for that tier.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import altair as alt

from pipeline.report import charts
from pipeline.stages.compare import analysed, compare
from pipeline.stages.labels import check_tier_complete
from pipeline.stages.reduce import METHODS, reduce
from pipeline.warehouse.schemas import FRAME_TIERS, check_tier_name
from pipeline.sql import query
from pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
PREFERRED_RULE = "gap"  # the disagreement rule the maps colour when a run has several


@dataclass
class Section:
    title: str
    figures: list[charts.Figure]
    intro: str = ""


def key_layers(layers: Sequence[int]) -> list[int]:
    """The CNN output (or first layer), the middle transformer layer and the last layer."""
    layers = sorted(layers)
    transformer = [l for l in layers if l >= 1] or layers
    picks = [layers[0], transformer[(len(transformer) - 1) // 2], layers[-1]]
    return sorted(set(picks), key=picks.index)


def _committed_reductions(wh: Warehouse, run: str) -> set[tuple[int, str]]:
    have = set()
    for (_, stage, shard) in wh.commits(run):
        if stage.startswith("reduce."):
            have.add((int(shard), stage.split(".", 1)[1]))
    return have


def ensure_reductions(wh: Warehouse, runs: Sequence[str], plan: dict[str, dict[str, list[int]]], n: int, seed: int,
                      recompute: bool = False, tier: str = "phone") -> list[dict]:
    """Compute the reductions of `plan` ({run: {method: [layers]}}) that are not committed yet
    (on a sample balanced over the labels of `tier`)."""
    done = []
    for run in runs:
        have = set() if recompute else _committed_reductions(wh, run)
        for method, layers in plan[run].items():
            for layer in layers:
                if (layer, method) in have:
                    continue
                info = reduce(run, layer, method, warehouse=str(wh.root), n=n, seed=seed, tier=tier)
                log.info("reduced %s layer %s with %s: %d frames, %.1f s", run, layer, method, info["rows"],
                         info["total_s"])
                done.append({k: info[k] for k in ("run", "layer", "method", "rows", "total_s")})
    return done


def _comparison_is_current(wh: Warehouse, run: str, other: str, k: int | None) -> bool:
    """A committed `compare` of (run, other) with this k, newer than both runs' frames and clusters."""
    done = [rec for (_, stage, _), rec in wh.commits(run).items() if stage == f"compare.{other}"]
    if not done or done[0].get("k") != k:
        return False
    inputs = [rec["time"] for r in {run, other} for (_, stage, _), rec in wh.commits(r).items()
              if stage.startswith(("extract", "analyze."))]
    return all(t <= done[0]["time"] for t in inputs)


def ensure_comparisons(wh: Warehouse, runs: Sequence[str], n: int, seed: int, k: int | None = None,
                       recompute: bool = False) -> tuple[list[dict], dict[str, str]]:
    """Compare the first run with each other run (`pipeline.stages.compare`) unless a current comparison is
    committed. k: the clustering to compare when both runs have it, else the largest k both have.
    Returns the comparisons computed and, per other run that cannot be compared (no shared
    utterances, other frame geometry), the reason."""
    done, refused = [], {}
    for other in runs[1:]:
        ks = set(analysed(wh, runs[0])) & set(analysed(wh, other))
        pair_k = k if k in ks else max(ks, default=None)
        if not recompute and _comparison_is_current(wh, runs[0], other, pair_k):
            continue
        try:
            info = compare((runs[0], other), warehouse=str(wh.root), n=n, seed=seed, k=pair_k)
        except ValueError as err:
            log.warning("not comparing %s with %s: %s", runs[0], other, err)
            refused[other] = str(err)
            continue
        done.append({key: info[key] for key in ("run", "other", "frames", "k", "total_s")})
    return done, refused


def check_tier(con, runs: Sequence[str], tier: str, wh: Warehouse | None = None) -> None:
    """A tier other than the frames' phone and word columns must be a `segments` tier of every run
    (and, when `labels` made it, complete: `pipeline.stages.labels.check_tier_complete`, given `wh`)."""
    check_tier_name(tier)
    if tier in FRAME_TIERS:
        return
    found = query(None, "report_tiers", {"runs": ",".join(runs)}, con=con).to_pylist()
    lacking = [run for run in runs if (run, tier) not in {(r["run"], r["tier"]) for r in found}]
    if lacking:
        offered = sorted({r["tier"] for r in found} | set(FRAME_TIERS))
        raise ValueError(f"run(s) {lacking} have no tier {tier!r}: use one of {offered} (CTC tiers come from "
                         "`python -m pipeline labels`)")
    for run in runs if wh is not None else ():
        check_tier_complete(wh, run, tier)


def disagreement_rules(counts) -> dict[str, str]:
    """Per run with `frame_disagreement` rows: the rule its maps colour (PREFERRED_RULE if present)."""
    rules: dict[str, set] = {}
    for r in counts.to_pylist():
        rules.setdefault(r["run"], set()).add(r["rule"])
    return {run: PREFERRED_RULE if PREFERRED_RULE in have else min(have) for run, have in rules.items()}


def build_report(runs: Sequence[str] | str, warehouse: str = "storage", out: str = "storage/report",
                 k: int | None = None, methods: Sequence[str] = METHODS, map_points: int = 2000,
                 top_n: int = 15, seed: int = 0, tier: str = "phone", recompute: bool = False,
                 png: bool = True, compare_n: int = 5000) -> Path:
    """Build `<out>/index.html` (+ PNGs) for one or more runs; returns the HTML's path.

    k: the k-means run to show (default: the largest k analysed for every run).
    tier: the labels: phone, word, or a `segments` tier every run has (e.g. ctc_greedy).
    map_points: frames per map (the reductions' sample size when this computes them).
    compare_n: frames in the CKA sample when this compares the first run with the others.
    recompute: redo the reductions and comparisons even where committed ones exist.
    """
    t0 = time.perf_counter()
    check_tier_name(tier)
    runs = [runs] if isinstance(runs, str) else list(runs)
    runs = [r for part in runs for r in part.split(",") if r]
    wh = Warehouse(warehouse)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown reduction method(s) {unknown}: use some of {', '.join(METHODS)}")
    layers = {}
    for run in runs:
        facts = wh.read_facts(run)
        if not facts or not facts.get("layers"):
            raise ValueError(f"run {run!r} has no extracted frames in {wh.root} (runs there: {wh.runs()}); "
                             "run `python -m pipeline extract` first")
        layers[run] = sorted(facts["layers"])
    check_tier(wh.connect(), runs, tier, wh)
    keys = {run: key_layers(layers[run]) for run in runs}
    plan = {run: {m: (layers[run] if m == "pca" else keys[run]) for m in methods} for run in runs}
    reduced = ensure_reductions(wh, runs, plan, map_points, seed, recompute, tier)
    t_reduce = time.perf_counter() - t0

    con = charts.connect(wh.root)
    table, table_params = charts.metric_table(con, runs, tier=tier)
    ks_by_run = {run: {r["k"] for r in table.to_pylist() if r["run"] == run} for run in runs}
    common = set.intersection(*ks_by_run.values()) if ks_by_run else set()
    if k is None:
        k = max(common) if common else max(set().union(*ks_by_run.values()), default=None)
    sections = []
    if table.num_rows:
        sections.append(Section("Clustering metrics by layer", [charts.metric_curves(con, runs, tier=tier)],
                                intro=f"How well k-means clusters of each layer agree with the {tier} labels, and how "
                                      f"well a linear probe reads the {tier} off the layer."))
    disagreement = charts.disagreement_bars(con, runs)
    rules = disagreement_rules(disagreement.data)
    colourings = ("phone_class", "label", "speaker") + (("cluster",) if k is not None else ()) + (
        "disagreement", "metadata")
    k_arg = k if k is not None else -1
    for run in runs:
        rule = rules.get(run, "")
        figs = [charts.map_grid(con, [(run, l) for l in keys[run]], m, k_arg, n_points=map_points, top_n=top_n,
                                seed=seed, colourings=colourings, tier=tier, rule=rule) for m in methods]
        if "pca" in methods and len(layers[run]) > len(keys[run]):
            figs.append(charts.map_grid(con, [(run, l) for l in layers[run]], "pca", k_arg,
                                        n_points=min(map_points, 1500), top_n=top_n, seed=seed,
                                        colourings=("phone_class", "disagreement"), name=f"map_pca_all_layers_{run}",
                                        title=f"PCA of every layer: {run}", panel_size=150, tier=tier, rule=rule))
        sections.append(Section(f"Maps of {run}: {' | '.join(charts.layer_name(l) for l in keys[run])}", figs))
    if len(runs) > 1:
        panels = [(runs[0], layers[runs[0]][0])] + [(r, layers[r][-1]) for r in runs]
        figs = [charts.map_grid(con, panels, m, k_arg, n_points=map_points, top_n=top_n, seed=seed,
                                colourings=colourings, name=f"map_{m}_runs", tier=tier, rule=rules.get(runs[0], ""))
                for m in methods]
        sections.append(Section("Runs side by side", figs,
                                intro="The original's 'CNN | pre-trained | fine-tuned' figure: the first run's "
                                      "CNN output, then the last layer of every run, on the same frames."))
        t1 = time.perf_counter()
        compared, refused = ensure_comparisons(wh, runs, compare_n, seed, k, recompute)
        t_compare = time.perf_counter() - t1
        con = charts.connect(wh.root)  # the views now include the comparison tables
        others = [r for r in runs[1:] if r not in refused]
        figs = [charts.cka_heatmap(con, runs[0], other) for other in others]
        if others:
            figs.append(charts.agreement_curves(con, runs[0], others, tier=tier))
        intro = (f"{runs[0]} against {', '.join(others)} on the same frames: linear CKA between every pair of "
                 "layers, and per layer how far the k-means clusterings of the two runs agree." if others else "")
        intro += "".join(f" Not compared with {r}: {why}" for r, why in refused.items())
        sections.append(Section("Model against model", figs, intro=intro.strip()))
    else:
        compared, refused, t_compare = [], {}, 0.0
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
    overview = query(None, "run_overview", {}, con=con)
    path = write_report(Path(out), runs, sections, table, overview, png=png,
                        facts={"k": k, "tier": tier, "map_points": map_points, "seed": seed, "top_n": top_n,
                               "warehouse": str(wh.root), "reductions_computed": reduced,
                               "reduce_s": round(t_reduce, 1), "comparisons_computed": compared,
                               "comparisons_refused": refused,
                               "compare_s": round(t_compare, 1), "compare_n": compare_n})
    log.info("report for %s in %.1f s: %s", runs, time.perf_counter() - t0, path)
    return path


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
.chart {{ overflow-x: auto; }} .err {{ color: #b00; }} nav a {{ margin-right: 1em; }}
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


def _table_html(table, caption: str) -> str:
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
                 facts: dict | None = None) -> Path:
    import vl_convert as vlc

    out.mkdir(parents=True, exist_ok=True)
    (out / "png").mkdir(exist_ok=True)
    (out / "specs").mkdir(exist_ok=True)
    vl_version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    specs, body, nav, figures = {}, [], [], []
    body.append("<h2 id='runs'>Runs</h2>" + _overview_html(overview, runs))
    body.append("<h2 id='metrics'>Metric table</h2>" + _table_html(
        table, "Bold: the best layer of each run and k for that metric (every frame scored; silhouette on a sample)."))
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
    title = "wav2vec2 layers: " + ", ".join(runs)
    subtitle = (f"Built {time.strftime('%Y-%m-%d %H:%M')} from warehouse {html.escape(str((facts or {}).get('warehouse', '')))}; "
                "works offline (Vega, Vega-Lite and Vega-Embed are inlined).")
    page = PAGE.format(title=html.escape(title), subtitle=subtitle, nav="".join(nav), body="\n".join(body),
                       specs=_script_json(specs), bundle=vlc.javascript_bundle(vl_version=vl_version))
    tmp = out / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    (out / "report.json").write_text(json.dumps({"runs": list(runs), **(facts or {}), "figures": figures,
                                                 "html_bytes": len(page.encode())}, indent=1, default=str))
    return out / "index.html"
