"""The report's intervals (issue 14): bands on the per-layer curves, CCA curves, the paired-differences
table, the nulls named with their reason; and old warehouses (metrics without the interval columns,
no `metric_differences`) still give a report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import vl_convert as vlc
from altair.vegalite.v6.schema import load_schema

from pipeline.report import build_report, charts
from pipeline.sql import query
from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.testing import make_frames_warehouse
from pipeline.warehouse import Warehouse

K = 4
LAYERS = (-1, 0, 1, 2)
GEOMETRY = {"receptive_field_samples": 400, "hop_samples": 320, "sample_rate_hz": 16000}
# the storage contract of issue 14 (/tmp/lead/contract14.md): metrics gains these columns
OLD_METRICS = pa.schema([("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64())])
NEW_METRICS = OLD_METRICS.append(pa.field("ci_low", pa.float64())).append(pa.field("ci_high", pa.float64())) \
    .append(pa.field("ci_method", pa.string())).append(pa.field("n_resamples", pa.int64())) \
    .append(pa.field("null_reason", pa.string())).append(pa.field("seed_sd", pa.float64())) \
    .append(pa.field("n_seeds", pa.int64()))
DIFFERENCES = pa.schema([
    ("other_run", pa.string()), ("layer", pa.int64()), ("other_layer", pa.int64()), ("tier", pa.string()),
    ("k", pa.int64()), ("metric", pa.string()), ("value", pa.float64()), ("other_value", pa.float64()),
    ("diff", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("significant", pa.bool_()),
    ("ci_method", pa.string()), ("n_resamples", pa.int64()), ("null_reason", pa.string()),
])
CLUSTERING = ("ami", "nmi", "homogeneity", "completeness", "cluster_purity", "pnmi")
SILHOUETTE_REASON = "sample-based metric: no interval"
WORD_REASON = "too few words with >= 5 tokens"


def ami_of(layer: int) -> float:
    return 0.2 + 0.1 * (layer + 1)  # rises with depth: 0.2, 0.3, 0.4, 0.5


def new_metric_rows(layer: int) -> list[dict]:
    """What `analyze` writes under the contract at k = K: intervals on the contingency metrics and the
    probe, silhouette without one (and why), 3 k-means seeds."""
    rows = [{"metric": m, "value": ami_of(layer) + i / 100, "n": 500, "ci_low": ami_of(layer) + i / 100 - 0.03,
             "ci_high": ami_of(layer) + i / 100 + 0.04, "ci_method": "basic", "n_resamples": 1000,
             "null_reason": None, "seed_sd": 0.005, "n_seeds": 3} for i, m in enumerate(CLUSTERING)]
    rows.append({"metric": "silhouette", "value": 0.1, "n": 200, "ci_low": None, "ci_high": None, "ci_method": None,
                 "n_resamples": None, "null_reason": SILHOUETTE_REASON, "seed_sd": 0.01, "n_seeds": 3})
    rows.append({"metric": "probe_balanced_accuracy", "value": 0.6, "n": 120, "ci_low": 0.5, "ci_high": 0.7,
                 "ci_method": "speaker-grouped basic", "n_resamples": 1000, "null_reason": None, "seed_sd": None,
                 "n_seeds": 1})
    rows.append({"metric": "probe_chance", "value": 0.125, "n": 120, "ci_low": None, "ci_high": None,
                 "ci_method": None, "n_resamples": None, "null_reason": None, "seed_sd": None, "n_seeds": 1})
    return rows


def cca_rows(layer: int) -> list[dict]:
    """CCA rows (k = 0): phone and mel with intervals, word null for lack of frequent words."""
    base = {"n": 400, "ci_method": "basic", "n_resamples": 200, "seed_sd": None, "n_seeds": None}
    return [
        {**base, "metric": "cca_phone", "value": 0.3 + 0.05 * layer, "ci_low": 0.25 + 0.05 * layer,
         "ci_high": 0.36 + 0.05 * layer, "null_reason": None},
        {**base, "metric": "cca_mel", "value": 0.7 - 0.1 * layer, "ci_low": 0.65 - 0.1 * layer,
         "ci_high": 0.74 - 0.1 * layer, "null_reason": None},
        {**base, "metric": "cca_word", "value": None, "ci_low": None, "ci_high": None, "ci_method": None,
         "n_resamples": None, "null_reason": WORD_REASON},
    ]


def difference_rows() -> list[dict]:
    """Adjacent layers of 'new' (ami: 0 < 1 holds, 1 < 2 does not, 2 vs 1 has no interval) and one layer of
    'new' against 'pre' (nmi lower in 'new', holds)."""
    def row(other_run, layer, other_layer, metric, value, other_value, lo, hi, reason=None):
        return {"other_run": other_run, "layer": layer, "other_layer": other_layer, "tier": "phone", "k": K,
                "metric": metric, "value": value, "other_value": other_value, "diff": value - other_value,
                "ci_low": lo, "ci_high": hi, "significant": None if lo is None else bool(lo > 0 or hi < 0),
                "ci_method": None if lo is None else "basic", "n_resamples": None if lo is None else 1000,
                "null_reason": reason}
    return [
        row("new", -1, 0, "ami", 0.2, 0.3, -0.15, -0.05),  # layer 0 > CNN: yes
        row("new", 0, 1, "ami", 0.3, 0.4, -0.2, 0.01),  # layer 1 > layer 0: no
        row("new", 1, 2, "ami", 0.4, 0.5, None, None, "one speaker"),
        row("new", 1, 2, "kmeans_inertia", 1.0, 2.0, -2.0, -0.5),  # not a metric the table shows
        row("pre", 2, 2, "nmi", 0.4, 0.6, -0.3, -0.1),  # pre layer 2 > new layer 2: yes
    ]


def write_new_run(root: Path, run: str = "new") -> None:
    """Frames like `extract`'s, then metrics and paired differences in the contract's columns, written
    and committed through the warehouse API as `analyze` does."""
    make_frames_warehouse(root, run=run, seed=3)
    wh = Warehouse(root)
    wh.ensure_facts(run, {"geometry": GEOMETRY})
    for layer in LAYERS:
        files = [wh.write("metrics", pa.Table.from_pylist(new_metric_rows(layer), schema=NEW_METRICS), run, 0,
                          layer=layer, k=K, tier="phone", subset="all"),
                 wh.write("metrics", pa.Table.from_pylist(cca_rows(layer), schema=NEW_METRICS), run, 0,
                          file_prefix="cca", layer=layer, k=0, tier="phone", subset="all")]
        wh.commit(run, "test.intervals", layer, files)
    record = wh.write("metric_differences", pa.Table.from_pylist(difference_rows(), schema=DIFFERENCES), run, 0)
    wh.commit(run, "test.differences", 0, [record])


def write_old_run(root: Path, run: str = "old") -> None:
    """A run whose metrics files predate intervals: metric, value, n only; no metric_differences."""
    make_frames_warehouse(root, run=run, seed=4)
    wh = Warehouse(root)
    wh.ensure_facts(run, {"geometry": GEOMETRY})
    for layer in LAYERS:
        rows = [{"metric": m, "value": ami_of(layer), "n": 500} for m in (*CLUSTERING, "silhouette")]
        wh.commit(run, "test.old_metrics", layer, [wh.write(
            "metrics", pa.Table.from_pylist(rows, schema=OLD_METRICS), run, 0, layer=layer, k=K, tier="phone",
            subset="all")])


@pytest.fixture(scope="module")
def old_warehouse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("intervals") / "old"
    write_old_run(root)
    return root


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """'pre' analysed by `analyze` (whatever columns it writes), 'new' with every interval column, CCA rows
    and paired differences."""
    root = tmp_path_factory.mktemp("intervals") / "wh"
    make_frames_warehouse(root, run="pre", seed=0)
    Warehouse(root).ensure_facts("pre", {"geometry": GEOMETRY})
    analyze(AnalyzeConfig(run="pre", warehouse=str(root), k=K, sample_per_label=40))
    write_new_run(root)
    return root


def build(root: Path, runs, out: Path) -> tuple[Path, dict]:
    path = build_report(runs, warehouse=str(root), out=str(out), map_points=100, methods=("pca",), png=False)
    return path, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def report(warehouse, tmp_path_factory) -> tuple[Path, dict]:
    return build(warehouse, ["new", "pre"], tmp_path_factory.mktemp("intervals") / "out")


def spec_of(report, name: str) -> dict:
    return json.loads((report[0].parent / "specs" / f"{name}.vl.json").read_text())


def figure(report, name: str) -> dict:
    return next(f for f in report[1]["figures"] if f["name"] == name)


def caption_of(report, name: str) -> str:
    """The caption under the figure's chart in the page (unescaped)."""
    page = report[0].read_text()
    div = figure(report, name)["div"]
    found = re.search(rf"<div class='chart' id='{div}'></div><p class='caption'>(.*?)</p>", page, re.S)
    assert found, name
    return found.group(1).replace("&#x27;", "'").replace("&quot;", '"').replace("&gt;", ">").replace("&amp;", "&")


def bands(spec: dict) -> dict[str, dict]:
    """Per metric filtered: the errorband layer of each panel of a concatenated metric chart."""
    panels = spec.get("concat") or spec.get("hconcat")
    out = {}
    for panel in panels:
        for layer in panel["layer"]:
            if layer["mark"]["type"] == "errorband":
                out[layer["transform"][0]["filter"]["equal"]] = layer
    return out


# ------------------------------------------------------------------------------------------- bands
def test_every_metric_panel_has_a_band_from_ci_low_to_ci_high(report):
    spec = spec_of(report, "metric_curves")
    drawn = bands(spec)
    assert set(drawn) == {*charts.HEADLINE_METRICS, charts.PROBE_METRIC}
    for band in drawn.values():
        assert band["encoding"]["y"]["field"] == "ci_low" and band["encoding"]["y2"]["field"] == "ci_high"
    rows = {(r["run"], r["layer"], r["metric"]): r for r in charts.data_rows(spec)}
    for layer in LAYERS:
        for i, metric in enumerate(CLUSTERING):
            r = rows[("new", layer, metric)]
            assert (r["ci_low"], r["ci_high"]) == pytest.approx((ami_of(layer) + i / 100 - 0.03,
                                                                 ami_of(layer) + i / 100 + 0.04), abs=1e-4)
            assert r["ci_method"] == "basic" and r["n_resamples"] == 1000 and r["n_seeds"] == 3
        assert rows[("new", layer, "silhouette")]["ci_low"] is None
        assert rows[("new", layer, "silhouette")]["null_reason"] == SILHOUETTE_REASON
    # 'pre' came from `analyze`: its rows are drawn whether or not its files have the interval columns
    assert {r["metric"] for r in charts.data_rows(spec) if r["run"] == "pre"} >= set(CLUSTERING)


def test_the_caption_says_how_to_read_the_band_and_names_the_nulls(report):
    caption = caption_of(report, "metric_curves")
    assert "Shaded band: the 95 % interval" in caption and "basic" in caption and "1000 resamples" in caption
    assert f"new: silhouette (no interval, every layer): {SILHOUETTE_REASON}" in caption
    assert "means over 3 k-means seeds" in caption
    note = figure(report, "metric_curves")["without_interval"]
    assert note.startswith("Without interval or value: ") and note in caption
    assert "probe_chance" not in note  # a chance level needs no interval


def test_cca_curves_beside_the_clustering_ones(report):
    names = [f["name"] for f in report[1]["figures"]]
    assert names[:2] == ["metric_curves", "cca_curves"]
    fig = figure(report, "cca_curves")
    assert fig["query"] == "report_cca" and fig["metrics"] == ["cca_phone", "cca_word", "cca_mel"]
    spec = spec_of(report, "cca_curves")
    assert set(bands(spec)) == {"cca_phone", "cca_word", "cca_mel"}
    rows = [r for r in charts.data_rows(spec) if r["run"] == "new"]  # 'pre': whatever `analyze` wrote
    assert {r["layer"] for r in rows} == set(LAYERS)
    phone = {r["layer"]: (r["value"], r["ci_low"], r["ci_high"]) for r in rows if r["metric"] == "cca_phone"}
    assert phone[1] == pytest.approx((0.35, 0.3, 0.41), abs=1e-4)
    caption = caption_of(report, "cca_curves")
    assert "Shaded band: the 95 % interval of each measure" in caption and "200 resamples" in caption
    assert f"cca_word (no value, every layer): {WORD_REASON}" in caption
    # the metric table is one row per clustering: CCA rows (k = 0) are not in it
    table = query(None, "report_metric_table", {"runs": "new", "tier": "phone", "subset": "all"},
                  con=charts.connect(report[1]["warehouse"]))
    assert set(table["k"].to_pylist()) == {K}


def test_paired_differences_table(report, warehouse):
    page = report[0].read_text()
    assert "Paired differences" in page
    table = report[1]["tables"][0]
    assert table["query"] == "report_metric_differences" and table["params"]["runs"] == "new,pre"
    result = query(None, table["query"], table["params"], con=charts.connect(warehouse)).to_pylist()
    assert (table["rows"], table["significant"], table["without_interval"]) == (
        len(result), sum(r["at_95"] == "yes" for r in result), sum(r["at_95"] is None for r in result))
    got = [(r["claim"], r["at_95"], r["metric"]) for r in result if r["run"] == "new"]  # not kmeans_inertia
    assert got == [("layer 0 > CNN", "yes", "ami"), ("layer 1 > layer 0", "no", "ami"),
                   ("layer 2 > layer 1", None, "ami"), ("pre layer 2 > new layer 2", "yes", "nmi")]
    cells = re.findall(r"<tr class='(\w+)'>(.*?)</tr>", page)
    texts = [(cls, re.findall(r"<td>(.*?)</td>", row)) for cls, row in cells]
    first = texts[0][1]  # CNN − layer 0 = -0.1 in [-0.15, -0.05]: shown in the claim's direction
    assert texts[0][0] == "yes" and first[:5] == ["ami", str(K), "layer 0 &gt; CNN", "yes", "+0.1000"]
    assert first[5:8] == ["[+0.0500, +0.1500]", "0.3000, 0.2000", "basic (1000 resamples)"]
    assert texts[1][0] == "no" and texts[1][1][3] == "no"
    assert texts[2][0] == "none" and texts[2][1][3] == "—" and texts[2][1][-1] == "one speaker"
    assert "new: adjacent layers: 1 of 3 differences hold at 95 %" in page
    assert "new against pre: the same layer: 1 of 1 differences hold at 95 %" in page


def test_the_metric_table_prints_each_interval_under_its_value(report):
    page = report[0].read_text()
    table = page[page.index("<h2 id='metrics'>"):page.index("<h2 id='section-0'>")]
    # 'new', layer 0: ami 0.3 in [0.27, 0.34]; silhouette has no interval, so nothing under it
    assert "0.3000<br><small class='ci'>0.2700–0.3400</small>" in table
    assert "0.1000<br><small" not in table


def test_every_spec_validates_and_compiles(report):
    validator = jsonschema.Draft7Validator(load_schema())
    for fig in report[1]["figures"]:
        spec = spec_of(report, fig["name"])
        errors = list(validator.iter_errors(spec))
        assert not errors, (fig["name"], errors[0].message)
        assert vlc.vegalite_to_vega(spec, vl_version="6.4")["marks"], fig["name"]


def test_bands_render_to_png(report, tmp_path):
    png = vlc.vegalite_to_png(spec_of(report, "metric_curves"), vl_version="6.4")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ------------------------------------------------------------------------------------------- old warehouses
def test_an_old_warehouse_still_gets_a_report(old_warehouse, tmp_path):
    con = charts.connect(old_warehouse)
    assert "ci_low" not in charts.view_columns(con, "metrics")
    path, info = build(old_warehouse, ["old"], tmp_path / "out")
    names = [f["name"] for f in info["figures"]]
    assert names[0] == "metric_curves" and "cca_curves" not in names
    page = path.read_text()
    assert "Paired differences" not in page and info["tables"] == []
    assert "No CCA measures in the warehouse yet" in page
    caption = caption_of((path, info), "metric_curves")
    assert "No value here has an interval yet" in caption and "rerun `python -m pipeline analyze`" in caption
    assert f"{', '.join(CLUSTERING)}, silhouette (no interval, every layer): {charts.NO_REASON}" in caption
    rows = charts.data_rows(spec_of((path, info), "metric_curves"))
    assert rows and all(r["ci_low"] is None and r["ci_high"] is None for r in rows)


def test_queries_read_old_metrics_files_as_null_intervals(old_warehouse):
    con = charts.connect(old_warehouse)
    metrics = query(None, "report_metrics", {"runs": "old", "metrics": "ami,silhouette", "tier": "phone",
                                             "subset": "all"}, con=con)
    assert metrics.num_rows == 2 * len(LAYERS) and metrics["ci_low"].null_count == metrics.num_rows
    assert query(None, "report_cca", {"runs": "old", "metrics": "cca_phone", "tier": "phone", "subset": "all"},
                 con=con).num_rows == 0
    found = charts.metric_differences(con, ["old"])
    assert found is None or found[0].num_rows == 0  # no table (or an empty view, once schemas declare it)


@pytest.mark.slow
def test_chromium_draws_the_bands_offline(report, tmp_path):
    from test_report import chromium, console_errors

    done = chromium(["--dump-dom", report[0].as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not console_errors(done.stderr), console_errors(done.stderr)
    dom = done.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-rendered="{len(report[1]["figures"])}"' in body and 'data-failed="0"' in body, body[:300]
    for name in ("metric_curves", "cca_curves"):
        chunk = dom[dom.index(f'id="{figure(report, name)["div"]}"'):]
        chunk = chunk[:chunk.index("</svg>")]
        areas = re.findall(r'class="mark-area[^"]*"(.*?)</g>', chunk, re.S)
        assert sum(a.count("<path") for a in areas) > 0, f"{name}: no band drawn"
