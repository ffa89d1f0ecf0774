"""Altair charts, each built from one named query (`sql/report_*.sql`) and nothing else.

Every function returns a `Figure`: the chart, the query's name and parameters, and the query's
result, so a test (or a reader) can rerun the query and compare. Data are inlined once per figure
(concatenated panels share one dataset) and bounded by the query (`$n_points`), so a figure of
three panels × four colourings of 2,000 frames stays ~0.5 MB of JSON.

Maps are wide: one row per frame, with `x_<panel>`, `y_<panel>`, `cluster_<panel>` per panel, so
the same frame sits in the same row of every panel and a selection (legend click on a phone, a
class or a speaker; a drag in a panel of the first row) highlights the same frames everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import altair as alt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.algorithms.phone_classes import CLASSES, classify
from pipeline.sql import query
from pipeline.warehouse import Warehouse

HEADLINE_METRICS = ("ami", "nmi", "homogeneity", "completeness", "cluster_purity", "pnmi", "silhouette")
PROBE_METRIC, PROBE_CHANCE = "probe_balanced_accuracy", "probe_chance"  # pipeline/algorithms/probe.py, per layer
CCA_METRICS = ("cca_phone", "cca_word", "cca_mel")  # metrics rows with k = 0 (not a clustering measure)
CCA_TARGETS = {"cca_phone": "frame vs one-hot phone", "cca_word": "mean-pooled word segment vs one-hot word",
               "cca_mel": "frame vs the same frame's log-mel filterbank"}
NO_REASON = "not stored (metrics written before intervals existed: rerun `python -m pipeline analyze`)"
CLASS_COLOURS = {
    "vowel": "#e15759", "diphthong": "#ff9da7", "approximant": "#f28e2b", "nasal": "#edc948",
    "fricative": "#59a14f", "affricate": "#76b7b2", "stop": "#4e79a7", "closure": "#9ecae9",
    "silence": "#bab0ac", "other": "#79706e",
}
TABLEAU20 = ["#4e79a7", "#a0cbe8", "#f28e2b", "#ffbe7d", "#59a14f", "#8cd17d", "#b6992d", "#f1ce63", "#499894",
             "#86bcb6", "#e15759", "#ff9d9a", "#79706e", "#d37295", "#fabfd2", "#b07aa1", "#d4a6c8", "#9d7660",
             "#d7b5a6", "#bab0ac"]
OTHER_COLOUR = "#dddddd"
# 0, 1, 2, … references disagreeing with the model at a frame: agreement cool, disagreement ever redder
DISAGREEMENT_COLOURS = ["#6baed6", "#fdae61", "#f46d43", "#d73027", "#a50026", "#67001f"]
NO_DISAGREEMENT_DATA = "no references"
COLOURINGS = ("phone_class", "label", "speaker", "cluster", "disagreement", "metadata")
MAX_METADATA_VALUES = 20  # a metadata key with more distinct values than this is left out of the colour menu

@dataclass
class Figure:
    name: str  # file-safe: the PNG is <name>.png
    title: str
    chart: Any  # an Altair top-level chart
    query: str  # the sql/ query the data came from
    params: dict
    data: pa.Table  # the query's result
    caption: str = ""
    extra: dict = field(default_factory=dict)

    def spec(self) -> dict:
        return self.chart.to_dict(validate=True)


def connect(warehouse) -> Any:
    """The warehouse's DuckDB views (every table, empty where nothing is committed; a `tier` on every
    clustering) plus the `phone_classes` (label, class) table the report queries join."""
    con = Warehouse(warehouse).connect()
    mapping = classify(query(None, "report_phone_labels", {}, con=con)["phone"].to_pylist())
    con.register("phone_classes", pa.table({
        "label": pa.array(list(mapping), pa.string()),
        "class": pa.array(list(mapping.values()), pa.string()),
        "class_order": pa.array([CLASSES.index(c) for c in mapping.values()], pa.int32()),
    }))
    return con


def records(table: pa.Table, digits: int = 4) -> list[dict]:
    """Rows as JSON-ready dicts; floats rounded (coordinates need no more) to keep the HTML small."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_floating(col.type):
            col = pc.round(col.cast(pa.float64()), digits)
        elif pa.types.is_decimal(col.type):
            col = col.cast(pa.float64())
        cols[name] = col
    return pa.table(cols).to_pylist()


def layer_name(layer: int) -> str:
    return {-1: "CNN", -2: "mel"}.get(layer, f"layer {layer}")


def view_columns(con, view: str) -> list[str]:
    """The columns of one of the connection's views; [] when there is no such view (an older warehouse)."""
    return query(None, "report_view_columns", {"view": view}, con=con)["column_name"].to_pylist()


# ------------------------------------------------------------------------------------------- intervals
INTERVAL_TOOLTIP = [alt.Tooltip("ci_low:Q", title="95 % interval: low", format=".4f"),
                    alt.Tooltip("ci_high:Q", title="95 % interval: high", format=".4f"),
                    alt.Tooltip("ci_method:N", title="interval method"),
                    alt.Tooltip("n_resamples:Q", title="bootstrap resamples"),
                    alt.Tooltip("null_reason:N", title="why null")]


def _band(x, colour, metric: str, opacity=alt.value(0.2), detail: str = "k:N", zero: bool = False):
    """The 95 % interval (ci_low..ci_high) of `metric` as a shaded band under its line (`colour`'s legend
    needs symbolOpacity=1, or the band's opacity greys its symbols)."""
    return alt.Chart().mark_errorband(interpolate="linear").encode(
        x=x, y=alt.Y("ci_low:Q", title=None, scale=alt.Scale(zero=zero)), y2="ci_high:Q",
        color=colour, detail=detail, opacity=opacity,
    ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=metric))


def _panel(layers: list, metric: str, rows: list[dict]) -> alt.LayerChart:
    """The layers of one metric's panel, plus the reason written across it when no value of it is there."""
    mine = [r for r in rows if r["metric"] == metric]
    if mine and all(r["value"] is None for r in mine):
        layers = layers + [alt.Chart().mark_text(color="#888888", fontSize=11, lineBreak="; ").encode(
            x=alt.value(85), y=alt.value(65), text="why:N",
        ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=metric)).transform_aggregate(
            why="min(null_reason)")]
    return alt.layer(*layers)


def interval_sentence(rows: list[dict], what: str = "value") -> str:
    """How to read the bands of a chart drawn from `rows`: the interval, its method and resamples."""
    with_ci = [r for r in rows if r.get("ci_low") is not None and r.get("ci_high") is not None]
    if not with_ci:
        return (f"No {what} here has an interval yet, so no band is drawn (metrics written before intervals "
                "existed: rerun `python -m pipeline analyze`).")
    methods = sorted({str(r.get("ci_method") or "bootstrap") for r in with_ci})
    resamples = sorted({int(r["n_resamples"]) for r in with_ci if r.get("n_resamples") is not None})
    how = f"{' / '.join(methods)} bootstrap" if not any("bootstrap" in m for m in methods) else " / ".join(methods)
    how += f", {' / '.join(map(str, resamples))} resamples" if resamples else ""
    return (f"Shaded band: the 95 % interval of each {what} ({how}, resampling speakers): where another draw of "
            "speakers would put it; bands of two layers that overlap do not prove the layers equal, the paired "
            "differences table tests that.")


def null_note(rows: list[dict]) -> str:
    """One sentence listing what is drawn without an interval (or without a value), with the reason: the
    metrics sharing a run, reason and layers named together."""
    by_metric: dict[tuple, list[int]] = {}
    for r in rows:
        if r["metric"] == PROBE_CHANCE:
            continue
        if r.get("value") is None:
            kind = "no value"
        elif r.get("ci_low") is None or r.get("ci_high") is None:
            kind = "no interval"
        else:
            continue
        reason = r.get("null_reason") or (NO_REASON if kind == "no interval" else "not given")
        by_metric.setdefault((r["run"], kind, reason, r["metric"]), []).append(r["layer"])
    if not by_metric:
        return ""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    all_layers = sorted({r["layer"] for r in rows})
    groups: dict[tuple, list[str]] = {}
    for (run, kind, reason, metric), layers in by_metric.items():
        groups.setdefault((run, kind, reason, tuple(sorted(set(layers)))), []).append(metric)
    parts = []
    for (run, kind, reason, layers), metrics in groups.items():
        where = "every layer" if list(layers) == all_layers else ", ".join(layer_name(l) for l in layers)
        parts.append(f"{run + ': ' if len(runs) > 1 else ''}{', '.join(metrics)} ({kind}, {where}): {reason}")
    return "Without interval or value: " + "; ".join(parts) + "."


def seed_sentence(rows: list[dict]) -> str:
    """The k-means seed spread, when `analyze --seeds N` restarted the clustering (N > 1)."""
    seeds = sorted({int(r["n_seeds"]) for r in rows if (r.get("n_seeds") or 1) > 1})
    if not seeds:
        return ""
    return (f" Values are means over {' / '.join(map(str, seeds))} k-means seeds; the tooltip gives their standard "
            "deviation (seed sd), the spread from the clustering's restarts alone.")


# ------------------------------------------------------------------------------------------- metrics
def metric_curves(con, runs: Sequence[str], metrics: Sequence[str] = HEADLINE_METRICS, tier: str = "phone",
                  subset: str = "all") -> Figure:
    """Per-layer metric curves: x = layer, y = value, one line per run (dashes per k) over the shaded band
    of its 95 % interval, a panel per metric, and a panel for the linear phone probe's balanced accuracy
    with its chance level dashed (when the runs were probed)."""
    params = {"runs": ",".join(runs), "metrics": ",".join([*metrics, PROBE_METRIC, PROBE_CHANCE]), "tier": tier,
              "subset": subset}
    data = query(None, "report_metrics", params, con=con)
    rows = records(data)
    ks = sorted({r["k"] for r in rows})
    present = {r["metric"] for r in rows}
    pick = alt.selection_point(fields=["run"], bind="legend", name="run_pick")
    x = alt.X("layer:O", title="layer (-2 = mel, -1 = CNN)" if any(r["layer"] == -2 for r in rows) else
              "layer (-1 = CNN)")
    tooltip = ["run:N", "layer:O", "k:Q", "metric:N", alt.Tooltip("value:Q", format=".4f"), "n:Q", *INTERVAL_TOOLTIP,
               alt.Tooltip("seed_sd:Q", title="seed sd", format=".4f"), alt.Tooltip("n_seeds:Q", title="k-means seeds")]
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    band_opacity = alt.condition(pick, alt.value(0.2), alt.value(0.04))
    colour = alt.Color("run:N", sort=list(runs), title="run", legend=alt.Legend(symbolOpacity=1))
    dash = alt.StrokeDash("k:N", title="k") if len(ks) > 1 else alt.Undefined
    panels = []
    for i, metric in enumerate(metrics):
        line = alt.Chart().mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)), color=colour, strokeDash=dash,
            opacity=opacity, tooltip=tooltip,
        ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=metric))
        line = line.add_params(pick) if i == 0 else line  # declared once, on a line (the band is a composite mark)
        panels.append(_panel([_band(x, colour, metric, band_opacity), line], metric, rows).properties(
            width=170, height=130, title=metric))
    if PROBE_METRIC in present:
        accuracy = alt.Chart().mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=True)), color=colour, strokeDash=dash,
            opacity=opacity, tooltip=tooltip,
        ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=PROBE_METRIC))
        chance = alt.Chart().mark_line(strokeDash=[4, 3], color="#888888", strokeWidth=1.2).encode(
            x=x, y="value:Q", detail=["run:N", "k:N"], tooltip=tooltip,
        ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=PROBE_CHANCE))
        panels.append(alt.layer(_band(x, colour, PROBE_METRIC, band_opacity, zero=True), accuracy, chance).properties(
            width=170, height=130, title=f"{PROBE_METRIC} (dashed: chance)"))
    chart = alt.ConcatChart(concat=panels, columns=4, data=alt.InlineData(values=rows)).resolve_scale(
        y="independent").properties(title=f"Cluster/{tier} agreement by layer (subset: {subset})")
    probe = (f" {PROBE_METRIC}: a linear {tier} probe (logistic regression) trained on about three quarters of the "
             "speakers of the balanced sample and tested on the others; the dashed grey line is chance "
             "(1 / labels in the test set)." if PROBE_METRIC in present else "")
    shown = [r for r in rows if r["metric"] in (*metrics, PROBE_METRIC)]
    note = null_note(shown)
    return Figure("metric_curves", "Metrics by layer", chart, "report_metrics", params, data,
                  caption=f"k-means with k = {', '.join(map(str, ks)) or '?'}; every frame of the layer is scored."
                          f"{probe} {interval_sentence(shown)}{seed_sentence(shown)}"
                          f"{' ' + note if note else ''} Click a run in the legend to highlight it.",
                  extra={"without_interval": note})


def cca_curves(con, runs: Sequence[str], tier: str = "phone", subset: str = "all") -> Figure:
    """Per-layer CCA measures (Pasad et al. 2023): a panel per target (phone, word, log-mel), a line per run
    over the shaded band of its 95 % interval."""
    params = {"runs": ",".join(runs), "metrics": ",".join(CCA_METRICS), "tier": tier, "subset": subset}
    data = query(None, "report_cca", params, con=con)
    rows = records(data)
    present = [m for m in CCA_METRICS if m in {r["metric"] for r in rows}]
    pick = alt.selection_point(fields=["run"], bind="legend", name="cca_run_pick")
    x = alt.X("layer:O", title="layer (-2 = mel, -1 = CNN)", axis=alt.Axis(labelAngle=0))
    colour = alt.Color("run:N", sort=list(runs), title="run", legend=alt.Legend(symbolOpacity=1))
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    tooltip = ["run:N", "layer:O", "metric:N", "tier:N", alt.Tooltip("value:Q", format=".4f"), "n:Q",
               *INTERVAL_TOOLTIP]
    panels = []
    for i, metric in enumerate(present):
        line = alt.Chart().mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title="projection-weighted CCA", scale=alt.Scale(zero=False)), color=colour,
            opacity=opacity, tooltip=tooltip,
        ).transform_filter(alt.FieldEqualPredicate(field="metric", equal=metric))
        band = _band(x, colour, metric, alt.condition(pick, alt.value(0.2), alt.value(0.04)), detail="run:N")
        line = line.add_params(pick) if i == 0 else line
        panels.append(_panel([band, line], metric, rows).properties(width=200, height=150,
                                                                    title=f"{metric}: {CCA_TARGETS[metric]}"))
    chart = alt.HConcatChart(hconcat=panels, data=alt.InlineData(values=rows)).resolve_scale(
        y="independent").properties(title="CCA with phone, word and acoustic targets by layer")
    note = null_note(rows)
    return Figure("cca_curves", "CCA by layer", chart, "report_cca", params, data,
                  caption="Projection-weighted CCA (as in Pasad et al., ICASSP 2023) between each layer and a "
                          "target, fitted on a speaker-disjoint train split and scored on the other speakers: "
                          + "; ".join(f"{m}: {CCA_TARGETS[m]}" for m in present) + ". "
                          + interval_sentence(rows, "measure") + (f" {note}" if note else "")
                          + " Click a run in the legend to highlight it.",
                  extra={"without_interval": note, "metrics": present})


def metric_differences(con, runs: Sequence[str], tier: str = "phone",
                       metrics: Sequence[str] = (*HEADLINE_METRICS, PROBE_METRIC, *CCA_METRICS)
                       ) -> tuple[pa.Table, dict] | None:
    """The paired differences (`metric_differences`) of these runs, one row per pair and metric with its
    claim ('layer 4 > layer 3') and whether it holds at 95 % ('yes' / 'no'); None when the warehouse has
    no such table (written before paired differences existed)."""
    if not view_columns(con, "metric_differences"):
        return None
    params = {"runs": ",".join(runs), "metrics": ",".join(metrics), "tier": tier}
    return query(None, "report_metric_differences", params, con=con), params


def metric_table(con, runs: Sequence[str], tier: str = "phone", subset: str = "all") -> tuple[pa.Table, dict]:
    params = {"runs": ",".join(runs), "tier": tier, "subset": subset}
    return query(None, "report_metric_table", params, con=con), params


def metric_intervals(con, runs: Sequence[str], metrics: Sequence[str], tier: str = "phone",
                     subset: str = "all") -> dict[tuple, tuple[float, float]]:
    """(run, k, layer, metric) -> its 95 % interval (ci_low, ci_high), for the metric table's cells."""
    params = {"runs": ",".join(runs), "metrics": ",".join(metrics), "tier": tier, "subset": subset}
    return {(r["run"], r["k"], r["layer"], r["metric"]): (r["ci_low"], r["ci_high"])
            for r in query(None, "report_metrics", params, con=con).to_pylist()
            if r["ci_low"] is not None and r["ci_high"] is not None}


# ------------------------------------------------------------------------------------------- maps
def _wide(data: pa.Table, n_panels: int) -> tuple[list[dict], list[str]]:
    """One row per frame: the frame's facts, its metadata as columns, and x/y/cluster per panel."""
    rows: dict[tuple, dict] = {}
    meta_keys: dict[str, set] = {}
    for r in records(data, digits=3):
        key = (r["utterance_id"], r["frame"])
        row = rows.get(key)
        if row is None:
            meta = dict(r.pop("metadata") or [])
            for k, v in meta.items():
                meta_keys.setdefault(k, set()).add(v)
            row = rows[key] = {k: v for k, v in r.items() if k not in ("panel", "run", "layer", "x", "y", "cluster")}
            row.update({f"meta_{k}": v for k, v in meta.items()})
        p = r["panel"]
        row[f"x_{p}"], row[f"y_{p}"] = r["x"], r["y"]
        row[f"cluster_{p}"] = None if r["cluster"] is None else str(r["cluster"])
    for row in rows.values():  # a legend entry per count; frames of utterances without references apart
        n = row.get("n_disagree")
        row["disagreement"] = NO_DISAGREEMENT_DATA if n is None else str(n)
    usable = sorted(k for k, v in meta_keys.items() if 1 < len(v) <= MAX_METADATA_VALUES)
    return list(rows.values()), usable


def _domain(rows: list[dict], field_name: str) -> list[str]:
    """Categories in the query's rank order (frequency in the whole layer / run), 'other' last."""
    ranks = {r[field_name]: r[f"{field_name}_rank"] for r in rows}
    return sorted(ranks, key=lambda name: (ranks[name], str(name)))


def _colour(kind: str, rows: list[dict], panel: int, top_n: int, domains: dict[str, list[str]]):
    if kind == "phone_class":
        present = {r["phone_class"] for r in rows}
        domain = [c for c in CLASSES if c in present]
        return alt.Color("phone_class:N", title="phone class", legend=alt.Legend(orient="right", symbolLimit=20),
                         scale=alt.Scale(domain=domain, range=[CLASS_COLOURS[c] for c in domain]))
    if kind in ("label", "speaker"):
        f = f"{kind}_top"
        domain = domains[f]
        rng = [TABLEAU20[i % 20] if d not in ("other", "(none)") else OTHER_COLOUR for i, d in enumerate(domain)]
        title = f"{domains['tier'] if kind == 'label' else kind} (top {top_n})"
        return alt.Color(f"{f}:N", title=title, scale=alt.Scale(domain=domain, range=rng),
                         legend=alt.Legend(orient="right", columns=2 if len(domain) > 12 else 1, symbolLimit=50))
    if kind == "disagreement":
        domain = domains["disagreement"]
        rng = [OTHER_COLOUR if d == NO_DISAGREEMENT_DATA else DISAGREEMENT_COLOURS[min(int(d), 5)] for d in domain]
        return alt.Color("disagreement:N", title="references disagreeing", scale=alt.Scale(domain=domain, range=rng),
                         legend=alt.Legend(orient="right"))
    if kind == "cluster":
        return alt.Color(f"cluster_{panel}:N", legend=None, scale=alt.Scale(scheme="category20"))
    if kind == "metadata":
        return alt.Color("meta_value:N", title="metadata value", scale=alt.Scale(scheme="tableau10"),
                         legend=alt.Legend(orient="right"))
    raise ValueError(f"unknown colouring {kind!r}: use some of {', '.join(COLOURINGS)}")


ROW_LABELS = {"phone_class": "phone class", "label": "{tier} (top {top_n}, rest 'other')",
              "speaker": "speaker (top {top_n})", "cluster": "k-means cluster (k = {k}, per panel)",
              "disagreement": "reference transcripts disagreeing with the model (rule '{rule}')",
              "metadata": "utterance metadata (menu below)"}
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


def map_grid(con, panels: Sequence[tuple[str, int]], method: str, k: int, n_points: int = 2000, top_n: int = 15,
             seed: int = 0, colourings: Sequence[str] = ("phone_class", "label", "speaker", "cluster", "metadata"),
             name: str | None = None, title: str | None = None, panel_size: int = 190, tier: str = "phone",
             rule: str = "") -> Figure:
    """The same frames mapped in several panels (run, layer), one row of panels per colouring.

    Labels are those of `tier` (phone, word or a segments tier such as ctc_greedy). The
    "disagreement" row colours each frame by how many reference transcripts disagree with the
    model there (`frame_disagreement` of the first panel's run under `rule`); it is left out when
    no frame has such a count, as "metadata" is without metadata.
    Legend clicks select a label / class / speaker / count across all panels; dragging in a panel
    of the first row selects a region, and every panel highlights those frames."""
    params = {"panels": ",".join(f"{r}:{layer}" for r, layer in panels), "method": method, "k": k,
              "n_points": n_points, "top_n": top_n, "seed": seed, "tier": tier, "rule": rule}
    data = query(None, "report_map_points", params, con=con)
    rows, meta_keys = _wide(data, len(panels))
    domains = {f: _domain(rows, f) for f in ("label_top", "speaker_top")}
    domains["tier"] = tier
    domains["disagreement"] = sorted({r["disagreement"] for r in rows},
                                     key=lambda d: (d == NO_DISAGREEMENT_DATA, int(d) if d.isdigit() else 0))
    for r in rows:  # the ranks only order the legends
        del r["label_top_rank"], r["speaker_top_rank"]
    has_counts = any(r["n_disagree"] is not None for r in rows)
    colourings = [c for c in colourings if (c != "metadata" or meta_keys) and (c != "disagreement" or has_counts)]
    picks = {kind: alt.selection_point(fields=[field], bind="legend", name=f"pick_{kind}")
             for kind, field in [("label", "label_top"), ("phone_class", "phone_class"), ("speaker", "speaker_top"),
                                 ("disagreement", "disagreement")]
             if kind in colourings}
    brushes = [alt.selection_interval(name=f"brush_{i}", encodings=["x", "y"], empty=True)
               for i in range(1, len(panels) + 1)] if len(panels) > 1 else []
    active = [*picks.values(), *brushes]
    highlight = active[0] if active else None
    for s in active[1:]:
        highlight = highlight & s
    opacity = alt.condition(highlight, alt.value(0.85), alt.value(0.06)) if highlight is not None else alt.value(0.8)
    tooltip = [alt.Tooltip("utterance_id:N", title="utterance"), alt.Tooltip("time_s:Q", title="time (s)", format=".2f"),
               "phone:N", alt.Tooltip("phone_class:N", title="class"),
               *([alt.Tooltip("label:N", title=tier)] if tier != "phone" else []), "speaker:N", "frame:Q",
               *([alt.Tooltip("n_disagree:Q", title="references disagreeing"),
                  alt.Tooltip("n_references:Q", title="references")] if has_counts else []),
               *[alt.Tooltip(f"meta_{m}:N", title=m) for m in meta_keys]]
    grid = []
    for row_i, kind in enumerate(colourings):
        cells = []
        for i, (run, layer) in enumerate(panels, start=1):
            cell = alt.Chart().mark_circle(size=9).encode(
                x=alt.X(f"x_{i}:Q", title=None, axis=alt.Axis(labels=False, ticks=False, grid=False)),
                y=alt.Y(f"y_{i}:Q", title=None, axis=alt.Axis(labels=False, ticks=False, grid=False)),
                color=_colour(kind, rows, i, top_n, domains), opacity=opacity,
                tooltip=tooltip + [alt.Tooltip(f"cluster_{i}:N", title=f"cluster (k={k})")],
            ).properties(width=panel_size, height=panel_size, title=f"{run} · {layer_name(layer)}" if row_i == 0 else "")
            if kind == "metadata":
                cell = cell.transform_calculate(meta_value="datum[meta_key]")
            if i == 1:  # a parameter is declared once; conditions in every panel refer to it
                cell = cell.add_params(*([picks[kind]] if kind in picks else []),
                                       *([_metadata_menu(meta_keys)] if kind == "metadata" else []))
            if row_i == 0 and brushes:
                cell = cell.add_params(brushes[i - 1])
            cells.append(cell)
        label = ROW_LABELS[kind].format(top_n=top_n, k=k, tier=tier, rule=rule)
        row = alt.hconcat(*cells, title=alt.TitleParams(f"coloured by {label}", anchor="start", fontSize=12))
        grid.append(row.resolve_scale(color="independent") if kind == "cluster" else row)
    title = title or f"{METHOD_NAMES.get(method, method)} maps: " + " | ".join(
        f"{r} {layer_name(l)}" for r, l in panels)
    chart = alt.VConcatChart(vconcat=grid, data=alt.InlineData(values=rows), spacing=12).resolve_scale(
        color="independent").properties(title=title)
    caption = (f"{len(rows)} frames (a balanced sample, the same in every panel). Click a legend entry to highlight "
               f"a {tier}, class or speaker in all panels (shift-click for several)"
               + ("; drag in a panel of the first row to follow a region's frames into the other panels." if brushes
                  else "."))
    name = name or f"map_{method}_" + "_".join(f"{r}_{l}" for r, l in panels)
    return Figure(_safe(name), title, chart, "report_map_points", params, data, caption=caption,
                  extra={"frames": len(rows), "panels": [list(p) for p in panels], "metadata_keys": meta_keys,
                         "colourings": colourings})


def _metadata_menu(meta_keys: list[str]):
    return alt.param(name="meta_key", value=f"meta_{meta_keys[0]}",
                     bind=alt.binding_select(options=[f"meta_{m}" for m in meta_keys], labels=meta_keys,
                                             name="colour the last row by: "))


# ------------------------------------------------------------------------------------------- contingency
def contingency_heatmap(con, run: str, k: int, layers: Sequence[int], layer: int | None = None,
                        tier: str = "phone") -> Figure:
    """Label × cluster heatmap (share of each label's frames per cluster), a menu to switch layers."""
    params = {"run": run, "k": k, "layers": ",".join(map(str, layers)), "tier": tier}
    data = query(None, "report_contingency", params, con=con)
    rows = records(data)
    shown = layer if layer is not None else layers[-1]
    n_labels = len({r["label"] for r in rows}) or 1
    pick = alt.param(name="heat_layer", value=shown,
                     bind=alt.binding_select(options=list(layers), labels=[layer_name(l) for l in layers],
                                             name="layer: "))
    y = alt.Y("label:N", sort=alt.EncodingSortField("label_rank", op="min"),
              title=f"{tier} (by class, frequency)" if tier == "phone" else f"{tier} (by frequency)")
    height = max(150, min(1100, 12 * n_labels))
    heat = alt.Chart().mark_rect().encode(
        x=alt.X("cluster:N", sort=alt.EncodingSortField("cluster_rank", op="min"),
                title=f"cluster (by majority {tier})"),
        y=y,
        color=alt.Color("share_of_label:Q", title=f"share of the {tier}'s frames",
                        scale=alt.Scale(domain=[0, 1], range=["#ffffff", "#08306b"]),
                        legend=alt.Legend(orient="top", direction="horizontal", gradientLength=160)),
        tooltip=[alt.Tooltip("label:N", title=tier), alt.Tooltip("label_class:N", title="class"), "cluster:N",
                 "n_frames:Q", alt.Tooltip("share_of_label:Q", title=f"share of the {tier}", format=".3f"),
                 alt.Tooltip("share_of_cluster:Q", format=".3f"),
                 alt.Tooltip("majority_label:N", title=f"cluster's majority {tier}"), "cluster_frames:Q"],
    ).add_params(pick).transform_filter("datum.layer == heat_layer").properties(
        width=max(200, min(900, 14 * k)), height=height)
    present = [c for c in CLASSES if c in {r["label_class"] for r in rows}]
    panels = [heat]
    if set(present) - {"other"}:  # phone-like labels: a strip of their classes beside the rows
        panels.append(alt.Chart().mark_rect().encode(
            y=y.axis(None), x=alt.value(0), x2=alt.value(10),
            color=alt.Color("label_class:N", title="phone class",
                            scale=alt.Scale(domain=present, range=[CLASS_COLOURS[c] for c in present])),
            tooltip=[alt.Tooltip("label:N", title=tier), alt.Tooltip("label_class:N", title="class"),
                     "label_frames:Q"],
        ).transform_filter("datum.layer == heat_layer").properties(width=10, height=height))
    chart = alt.HConcatChart(hconcat=panels, data=alt.InlineData(values=rows), spacing=2).resolve_scale(
        color="independent").properties(title=f"{run}: {tier} × cluster (k = {k}), rows sum to 1")
    name = f"contingency_{run}_k{k}" + ("" if tier == "phone" else f"_{tier}")
    return Figure(_safe(name), f"{tier.capitalize()} × cluster: {run}", chart, "report_contingency", params,
                  data, caption=f"Each row is one {tier}'s frames spread over the clusters (white: none). "
                                "Use the menu under the chart to switch layers.")


# ------------------------------------------------------------------------------------------- model against model
def cka_heatmap(con, run: str, other: str) -> Figure:
    """Linear CKA of every layer of `run` (rows) × every layer of `other` (columns), value on each cell."""
    params = {"run": run, "other": other}
    data = query(None, "compare_cka", params, con=con)
    rows = records(data)
    n_a = len({r["layer"] for r in rows}) or 1
    n_b = len({r["other_layer"] for r in rows}) or 1
    cell = 34 if max(n_a, n_b) <= 14 else 24
    base = alt.Chart().encode(
        x=alt.X("other_layer:O", title=f"{other}: layer (-1 = CNN)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title=f"{run}: layer (-1 = CNN)", sort="descending"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title="linear CKA", scale=alt.Scale(domain=[0, 1], scheme="viridis"),
                        legend=alt.Legend(orient="right", gradientLength=120)),
        tooltip=[alt.Tooltip("layer:O", title=f"{run} layer"), alt.Tooltip("other_layer:O", title=f"{other} layer"),
                 alt.Tooltip("value:Q", title="CKA (biased HSIC)", format=".4f"),
                 alt.Tooltip("value_debiased:Q", title="CKA (debiased HSIC)", format=".4f"), "n:Q"],
    )
    text = base.mark_text(fontSize=9 if cell < 30 else 10).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition("datum.value > 0.6", alt.value("#111111"), alt.value("#ffffff")),
    )
    n = rows[0]["n"] if rows else 0
    chart = alt.LayerChart(layer=[rect, text], data=alt.InlineData(values=rows)).properties(
        width=cell * n_b, height=cell * n_a, title=f"Linear CKA: {run} × {other} ({n} frames)")
    return Figure(_safe(f"cka_{run}_{other}"), f"Linear CKA: {run} × {other}", chart, "compare_cka", params, data,
                  caption=f"Centred kernel alignment (linear kernel, biased HSIC estimator; the tooltip also gives "
                          f"the debiased one) between every layer of {run} and every layer of {other} on the "
                          f"same {n} frames: 1 = the same representation up to rotation and scale.")


def agreement_curves(con, run: str, others: Sequence[str], metrics: Sequence[str] = ("ami", "nmi", "ari", "cka"),
                     tier: str = "phone") -> Figure:
    """Per layer: how much `run` agrees with each other run (clusterings trained for `tier`: AMI, NMI, ARI;
    same-layer CKA)."""
    params = {"run": run, "others": ",".join(others), "metrics": ",".join(metrics), "tier": tier}
    data = query(None, "compare_agreement", params, con=con)
    rows = records(data)
    ks = sorted({r["k"] for r in rows if r["k"] is not None})
    present = [m for m in metrics if m in {r["metric"] for r in rows}]
    chart = alt.Chart(alt.InlineData(values=rows)).mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer (-1 = CNN)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", title=f"agreement of {run} with the other run", scale=alt.Scale(domain=[0, 1], clamp=True)),
        color=alt.Color("metric:N", sort=present, title="measure", scale=alt.Scale(scheme="tableau10")),
        strokeDash=alt.StrokeDash("other:N", sort=list(others), title="other run"),
        tooltip=["other:N", "layer:O", "metric:N", alt.Tooltip("value:Q", format=".4f"), "k:Q", "n:Q"],
    ).properties(width=420, height=220, title=f"{run} against {', '.join(others)}, layer by layer")
    clusters = (f"k-means clusters ({tier}) of the same layer in both runs (k = {', '.join(map(str, ks))}; AMI, NMI, "
                "ARI on every frame both runs assigned)") if ks else (
        f"no clustering both runs share (run `analyze --tier {tier}` on both)")
    return Figure(_safe(f"agreement_{run}"), f"Agreement of {run} with {', '.join(others)}", chart,
                  "compare_agreement", params, data,
                  caption=f"Per layer: {clusters}; 'cka' is the linear CKA of that layer in both runs (the "
                          "heatmap's diagonal). No band here: these agreements are not resampled; whether a "
                          "metric differs between the runs at a layer, with its interval, is in the paired "
                          "differences table.")


# ------------------------------------------------------------------------------------------- variants and groups
def group_attributes(con, runs: Sequence[str], k: int, tier: str = "phone") -> list[dict]:
    """(run, attribute, n_groups, n_layers) of every `analyze --by` scoring of these runs at k and tier."""
    return query(None, "report_group_attributes", {"runs": ",".join(runs), "k": k, "tier": tier}, con=con).to_pylist()


def group_curves(con, run: str, k: int, by: str, tier: str = "phone") -> Figure:
    """Per layer and group of `by`: the layer's clustering scored on the group (AMI, a line per group),
    and the cross-group test: k-means and the probe fitted within the group (solid) or on the other
    groups (dashed). Clicking a group in the legend highlights it in every panel."""
    params = {"run": run, "k": k, "tier": tier, "by": by}
    data = query(None, "report_group_metrics", params, con=con)
    rows = records(data)
    groups = sorted({r["group_value"] for r in rows})
    pick = alt.selection_point(fields=["group_value"], bind="legend", name="group_pick")
    colour = alt.Color("group_value:N", title=by, sort=groups, scale=alt.Scale(range=TABLEAU20),
                       legend=alt.Legend(columns=2 if len(groups) > 12 else 1, symbolLimit=60))
    x = alt.X("layer:O", title="layer (-1 = CNN)", axis=alt.Axis(labelAngle=0))
    tooltip = [alt.Tooltip("group_value:N", title=by), "layer:O", "metric:N", alt.Tooltip("value:Q", format=".4f"),
               alt.Tooltip("gap:Q", title="within − transfer", format=".4f"), "n:Q"]
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.12))
    fits = alt.StrokeDash("fit:N", title="fitted on", sort=["within", "transfer"],
                          scale=alt.Scale(domain=["within", "transfer"], range=[[1, 0], [5, 3]]))
    per_group = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("value:Q", title="AMI", scale=alt.Scale(zero=False)), color=colour, opacity=opacity,
        tooltip=tooltip,
    ).transform_filter(alt.FieldEqualPredicate(field="metric", equal="ami")).add_params(pick).properties(
        width=220, height=170, title=f"AMI of the layer's k-means, per {by}")
    cross = [alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("value:Q", title=score, scale=alt.Scale(zero=False)), color=colour, strokeDash=fits,
        opacity=opacity, tooltip=tooltip,
    ).transform_filter(alt.FieldEqualPredicate(field="score", equal=score)).transform_filter(
        alt.FieldOneOfPredicate(field="fit", oneOf=["within", "transfer"])).properties(
        width=220, height=170, title=title)
        for score, title in [("ami", "k-means: own group vs the other groups"),
                             ("probe balanced accuracy", "phone probe: own group vs the other groups")]
        if any(r["score"] == score and r["fit"] != "layer clustering" for r in rows)]
    chart = alt.HConcatChart(hconcat=[per_group, *cross], data=alt.InlineData(values=rows)).resolve_scale(
        y="independent").properties(title=f"{run}: does the {tier} structure carry over between {by} groups?")
    return Figure(_safe(f"groups_{run}_{by}_k{k}" + ("" if tier == "phone" else f"_{tier}")),
                  f"Groups of {by}: {run}", chart, "report_group_metrics", params, data,
                  caption=f"Left: each layer's k-means (k = {k}) scored on the frames of one {by} value. Middle and "
                          f"right, the cross-group test on the balanced sample: k-means fitted on the group's own "
                          f"frames (solid) or on the other groups' (dashed), and the linear {tier} probe trained on "
                          f"the group's other speakers (solid) or on the other groups (dashed), each scored on the "
                          f"group. A dashed line far below its solid one: structure that does not transfer between "
                          f"groups. Click a group in the legend to highlight it.",
                  extra={"attribute": by, "groups": groups})


# ------------------------------------------------------------------------------------------- transcripts
def decoded_cer_curves(con, runs: Sequence[str], tier: str = "phone") -> Figure:
    """Per layer: CER of decoding each frame's cluster (k-means trained for `tier`) as the cluster's majority
    greedy-CTC label."""
    params = {"runs": ",".join(runs), "tier": tier}
    data = query(None, "report_decoded_cer", params, con=con)
    rows = records(data)
    ks = sorted({r["k"] for r in rows})
    chart = alt.Chart(alt.InlineData(values=rows)).mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer (-1 = CNN)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("cer:Q", title="corpus CER (lower: clusters carry the transcript)", scale=alt.Scale(zero=True)),
        color=alt.Color("run:N", sort=list(runs), title="run"),
        strokeDash=alt.StrokeDash("k:N", title="k") if len(ks) > 1 else alt.Undefined,
        tooltip=["run:N", "layer:O", "k:Q", alt.Tooltip("cer:Q", title="corpus CER", format=".4f"),
                 alt.Tooltip("mean_utterance_cer:Q", title="mean utterance CER", format=".4f"),
                 "n_edits:Q", "n_reference_chars:Q", "n_utterances:Q"],
    ).properties(width=420, height=220, title="Cluster-majority decoding: character error rate by layer")
    name = "decoded_cer" + ("" if tier == "phone" else f"_{tier}")
    return Figure(_safe(name), "Cluster-majority decoding CER", chart, "report_decoded_cer", params, data,
                  caption=f"Each cluster (k = {', '.join(map(str, ks)) or '?'}) is mapped to the greedy CTC label most "
                          "of its frames carry; every frame is replaced by its cluster's label, the sequence "
                          "CTC-collapsed and compared with the model's own greedy transcript. Corpus CER = sum of "
                          "edits / sum of reference characters.")


def disagreement_bars(con, runs: Sequence[str]) -> Figure:
    """Frames per number of reference transcripts that disagree with the model (per run and rule)."""
    params = {"runs": ",".join(runs)}
    data = query(None, "report_disagreement_counts", params, con=con)
    rows = records(data)
    rules = sorted({r["rule"] for r in rows})
    shown = [r for r in runs if r in {row["run"] for row in rows}]
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("n_disagree:O", title="references disagreeing with the model", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("run:N", sort=shown),
        y=alt.Y("n_frames:Q", title="frames"),
        color=alt.Color("run:N", sort=shown, title="run"),
        tooltip=["run:N", "rule:N", "n_disagree:O", "n_references:Q", "n_frames:Q",
                 alt.Tooltip("share:Q", title="share of the run's frames", format=".3f")],
    ).properties(width=max(220, 50 * (1 + max((r["n_disagree"] for r in rows), default=0)) * len(shown)),
                 height=200)
    chart = alt.FacetChart(data=alt.InlineData(values=rows), spec=bars,
                           facet=alt.Facet("rule:N", title="rule", sort=rules), columns=len(rules) or 1).properties(
        title="Transcriber disagreement: frames per number of disagreeing references")
    return Figure("disagreement_counts", "Frames per disagreement count", chart, "report_disagreement_counts", params,
                  data, caption="Per frame, how many reference transcripts disagree with the model's greedy "
                                "transcript there (rule 'gap': a frame of a character the reference substitutes "
                                "or lacks, or of the blank gap where the reference has characters the model "
                                "lacks; rule 'original': the original study's walk). The maps colour the same "
                                "counts.")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def data_rows(spec: dict) -> list[dict]:
    """Every inline data row of a Vega-Lite spec (top-level `data`, `datasets`)."""
    rows = list(spec.get("data", {}).get("values", []) if isinstance(spec.get("data"), dict) else [])
    for values in spec.get("datasets", {}).values():
        rows.extend(values)
    return rows
