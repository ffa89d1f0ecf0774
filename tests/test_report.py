"""pipeline.report / charts / phone_classes: specs validate, data come from the named queries, the
HTML is self-contained and includes every chart, PNGs are drawn; a headless Chromium renders it."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pytest
import vl_convert as vlc
from altair.vegalite.v6.schema import load_schema

from pipeline import cli
from pipeline.report import charts
from pipeline.stages import transcripts as T
from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.algorithms.phone_classes import ARPABET, CLASSES, TIMIT, classify, detect_inventory, embedded_classes
from pipeline.report import build_report, key_layers
from pipeline.stages.reduce import reduce_many
from pipeline.warehouse.schemas import SEGMENTS
from pipeline.sql import query, run_checks
from pipeline.warehouse import Warehouse
from pipeline.testing import make_frames_warehouse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
K = 4
GEOMETRY = {"receptive_field_samples": 400, "hop_samples": 320, "sample_rate_hz": 16000}  # 20 ms hop
HOP_S = 0.02
# greedy CTC frame labels of the synthetic corpus: one character per phone, silence and unlabelled frames blank
GREEDY = {"sil": T.BLANK_LABEL, None: T.BLANK_LABEL, "a": "A", "i:": "I", "s": "S", "t": "T", "n": "N", "l": "L",
          "D": "D"}


def frame_phones(root: Path, run: str) -> dict[str, list]:
    rows = Warehouse(root).connect().execute(
        "select utterance_id, phone from frames where run = ? and layer = -1 order by utterance_id, frame",
        [run]).fetchall()
    out: dict[str, list] = {}
    for utt, phone in rows:
        out.setdefault(utt, []).append(phone)
    return out


def add_greedy_tier(root: Path, run: str) -> dict[str, list[str]]:
    """A `ctc_greedy` segments tier (what `labels` writes): one interval per run of equal greedy labels,
    frame f covering [f, f + 1) × 20 ms + 2.5 ms, so its centre (f × 20 ms + 12.5 ms) lies inside."""
    wh = Warehouse(root)
    labels = {utt: [GREEDY[p] for p in phones] for utt, phones in frame_phones(root, run).items()}
    rows = []
    for utt, frames in labels.items():
        starts = [0] + [f for f in range(1, len(frames)) if frames[f] != frames[f - 1]]
        for idx, (a, b) in enumerate(zip(starts, starts[1:] + [len(frames)])):
            rows.append({"utterance_id": utt, "tier": T.GREEDY_TIER, "idx": idx, "label": frames[a],
                         "start_s": 0.0025 + HOP_S * a, "end_s": 0.0025 + HOP_S * b, "source": "test"})
    record = wh.write("segments", pa.Table.from_pylist(rows, schema=SEGMENTS), run, 0, file_prefix="ctc")
    # one file for every shard: not a `labels` stage, whose tiers must have one commit per corpus shard
    wh.commit(run, f"test.{T.GREEDY_TIER}", 0, [record])
    return labels


def write_transcripts(root: Path, run: str, layers=(-1, 0, 1, 2)) -> None:
    """`decoded` for every layer at k = K and `frame_disagreement` (rule gap) against three references:
    the model's own transcript (agrees), one with its 2nd character substituted, one with that
    character substituted and its 4th deleted, so frames disagree with 0, 1 or 2 references."""
    wh = Warehouse(root)
    con = wh.connect()
    labels = T.greedy_frame_labels(query(None, "tier_segments", {"run": run, "tier": T.GREEDY_TIER}, con=con), HOP_S)
    for layer in layers:
        clusters = query(None, "clusters_of", {"run": run, "layer": layer, "k": K, "tier": "phone"}, con=con)
        table = T.decoded_table(labels, clusters)
        table = table.append_column("tier", pa.array(["phone"] * table.num_rows, pa.string()))
        record = wh.write("decoded", table, run, 0, file_prefix="phone", layer=layer, k=K)
        wh.commit(run, f"transcripts.decoded.k{K}", layer, [record])
    references = {}
    for utt, frames in labels.items():
        own = T.greedy_transcript(frames)
        substituted = own[:1] + "x" + own[2:]
        references[utt] = [own, substituted, substituted[:3] + substituted[4:]]
    table = T.disagreement_table(labels, references, rule="gap")
    wh.commit(run, "transcripts.disagreement.gap", 0, [wh.write("frame_disagreement", table, run, 0, rule="gap")])


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """Two runs of one synthetic corpus ('pre', 'ft'), analysed with k = 4, and one not analysed ('raw').
    'pre' alone also has per-gender scores (`analyze --by gender`), a ctc_greedy tier, and the
    `transcripts` tables."""
    root = tmp_path_factory.mktemp("report") / "wh"
    for run, seed in [("pre", 0), ("ft", 1), ("raw", 2)]:
        make_frames_warehouse(root, run=run, seed=seed)
        Warehouse(root).ensure_facts(run, {"geometry": GEOMETRY})  # frame centres for segment tiers
    add_greedy_tier(root, "pre")
    analyze(AnalyzeConfig(run="pre", warehouse=str(root), k=K, sample_per_label=40, by="gender"))
    analyze(AnalyzeConfig(run="ft", warehouse=str(root), k=K, sample_per_label=40))
    write_transcripts(root, "pre")
    return root


def warehouse_files(root: Path) -> dict[str, int]:
    """Every file of a warehouse with its modification time: what a reader must leave as it is."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_build(warehouse, tmp_path_factory) -> tuple[Path, dict, dict, dict]:
    """The report of 'pre' and 'ft' before any `reduce` or `compare`: (page, report.json, the
    warehouse's files before, after)."""
    out = tmp_path_factory.mktemp("report") / "first"
    before = warehouse_files(warehouse)
    path = build_report(["pre", "ft"], warehouse=str(warehouse), out=str(out), map_points=200, methods=("pca", "tsne"),
                        png=False)
    return path, json.loads((out / "report.json").read_text()), before, warehouse_files(warehouse)


@pytest.fixture(scope="module")
def report(first_build, warehouse, tmp_path_factory) -> tuple[Path, dict]:
    """The report of 'pre' and 'ft' after running, through the CLI, the commands the first build named."""
    for command in first_build[1]["commands"]:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "pipeline"], command
        assert cli.main(argv[3:]) == 0, command
    out = tmp_path_factory.mktemp("report") / "out"
    path = build_report(["pre", "ft"], warehouse=str(warehouse), out=str(out), map_points=200, methods=("pca", "tsne"))
    return path, json.loads((out / "report.json").read_text())


def spec_of(report, name: str) -> dict:
    return json.loads((report[0].parent / "specs" / f"{name}.vl.json").read_text())


# ------------------------------------------------------------------------------------------- report files
def test_report_has_the_expected_figures(report):
    names = [f["name"] for f in report[1]["figures"]]
    assert names[0] == "metric_curves"
    for run in ("pre", "ft"):
        assert f"map_pca_{run}_-1_{run}_1_{run}_2" in names and f"map_tsne_{run}_-1_{run}_1_{run}_2" in names
        assert f"map_pca_all_layers_{run}" in names and f"contingency_{run}_k{K}" in names
    assert "map_pca_runs" in names and "map_tsne_runs" in names
    assert "cka_pre_ft" in names and "agreement_pre" in names
    # only 'pre' was analysed --by gender and has transcripts
    assert f"groups_pre_gender_k{K}" in names and not [n for n in names if n.startswith("groups_ft")]
    assert names[-2:] == ["decoded_cer", "disagreement_counts"]
    assert report[1]["k"] == K
    page = report[0].read_text()
    assert "Variants and groups" in page and "Transcripts and transcriber disagreement" in page
    colourings = {f["name"]: f["colourings"] for f in report[1]["figures"] if f["query"] == "report_map_points"}
    assert "disagreement" in colourings["map_tsne_pre_-1_pre_1_pre_2"] and "disagreement" in colourings["map_tsne_runs"]
    assert colourings["map_pca_all_layers_pre"] == ["phone_class", "disagreement"]
    assert "disagreement" not in colourings["map_tsne_ft_-1_ft_1_ft_2"]
    assert colourings["map_pca_all_layers_ft"] == ["phone_class"]


def test_every_spec_validates_and_compiles(report):
    validator = jsonschema.Draft7Validator(load_schema())
    for fig in report[1]["figures"]:
        spec = spec_of(report, fig["name"])
        errors = list(validator.iter_errors(spec))
        assert not errors, (fig["name"], errors[0].message)
        vega = vlc.vegalite_to_vega(spec, vl_version="6.4")
        assert vega["marks"], fig["name"]


def _rows_by_panel(rows: list[dict], panels: int) -> dict[int, dict]:
    return {p: {(r["utterance_id"], r["frame"]): (r[f"x_{p}"], r[f"y_{p}"], r[f"cluster_{p}"]) for r in rows}
            for p in range(1, panels + 1)}


def test_each_chart_is_drawn_from_its_named_query(report, warehouse):
    con = charts.connect(warehouse)
    for fig in report[1]["figures"]:
        assert fig["query"].startswith(("report_", "compare_"))
        result = query(None, fig["query"], fig["params"], con=con)
        drawn = charts.data_rows(spec_of(report, fig["name"]))
        assert result.num_rows == fig["rows"] > 0, fig["name"]
        if fig["query"] == "report_map_points":
            n_panels = len(fig["panels"])
            expected = {p: {} for p in range(1, n_panels + 1)}
            for r in charts.records(result, digits=3):
                cluster = None if r["cluster"] is None else str(r["cluster"])
                expected[r["panel"]][(r["utterance_id"], r["frame"])] = (r["x"], r["y"], cluster)
            assert _rows_by_panel(drawn, n_panels) == expected, fig["name"]
            assert len(drawn) == fig["frames"] <= 200
        else:
            assert drawn == charts.records(result), fig["name"]


def test_the_maps_show_the_same_frames_in_every_panel(report, warehouse):
    con = charts.connect(warehouse)
    fig = next(f for f in report[1]["figures"] if f["name"] == "map_tsne_runs")
    result = query(None, fig["query"], fig["params"], con=con).to_pylist()
    per_panel = {}
    for r in result:
        per_panel.setdefault(r["panel"], set()).add((r["utterance_id"], r["frame"]))
    assert len(per_panel) == 3 and per_panel[1] == per_panel[2] == per_panel[3]
    assert {r["phone_class"] for r in result} <= set(CLASSES) - {"other"}
    assert fig["panels"] == [["pre", -1], ["pre", 2], ["ft", 2]]


def test_html_is_self_contained_and_includes_every_chart(report):
    page = report[0].read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, re.I), "a script is loaded from elsewhere"
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", page, re.I)
    assert not re.search(r"""\s(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    specs = json.loads(re.search(r'<script type="application/json" id="vl-specs">(.*?)</script>', page, re.S).group(1))
    for fig in report[1]["figures"]:
        assert f"id='{fig['div']}'" in page
        assert specs[fig["div"]] == spec_of(report, fig["name"])
    assert "vegaEmbed" in page and len(page) > 800_000  # the inlined Vega bundle is ~0.9 MB
    assert "<td class='best'>" in page  # the metric table


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG (what vl-convert and Chromium write) → (h, w, channels)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0, header
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * bpp + 1)
    return _unfilter(raw, bpp).reshape(height, width, bpp)


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    from numba import njit

    @njit(cache=False)
    def run(raw, bpp):
        h, n = raw.shape[0], raw.shape[1] - 1
        out = np.zeros((h, n), np.uint8)
        for y in range(h):
            f = raw[y, 0]
            for i in range(n):
                x = np.int32(raw[y, i + 1])
                a = np.int32(out[y, i - bpp]) if i >= bpp else 0
                b = np.int32(out[y - 1, i]) if y > 0 else 0
                c = np.int32(out[y - 1, i - bpp]) if (y > 0 and i >= bpp) else 0
                if f == 1:
                    x += a
                elif f == 2:
                    x += b
                elif f == 3:
                    x += (a + b) // 2
                elif f == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    x += a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                out[y, i] = x & 255
        return out

    return run(raw, bpp)


def assert_not_blank(path: Path) -> None:
    px = png_pixels(path)
    rgb = px[..., :3].reshape(-1, 3)
    assert px.shape[0] > 50 and px.shape[1] > 50, (path, px.shape)
    background = np.all(rgb > 245, axis=1)
    assert 0.01 < 1 - background.mean() < 0.95, (path, "share of drawn pixels", 1 - background.mean())
    assert len(np.unique(rgb[~background], axis=0)) > 8, (path, "too few colours")


def test_one_non_blank_png_per_chart(report):
    pngs = report[0].parent / "png"
    for fig in report[1]["figures"]:
        assert_not_blank(pngs / f"{fig['name']}.png")


def test_data_is_bounded(report):
    for fig in report[1]["figures"]:
        assert len(charts.data_rows(spec_of(report, fig["name"]))) <= 10_000
    assert report[0].stat().st_size < 4_000_000


def test_model_against_model_section(report, warehouse):
    assert report[1]["comparisons_computed"] == []  # the comparison `compare` committed is drawn
    assert report[1]["comparisons"] == {"ft": {"k": K, "state": "current",
                                               "command": f"python -m pipeline compare --runs pre,ft "
                                                          f"--warehouse {warehouse}"}}
    heat = spec_of(report, "cka_pre_ft")
    assert [layer["mark"]["type"] for layer in heat["layer"]] == ["rect", "text"]
    cells = charts.data_rows(heat)
    assert {(r["layer"], r["other_layer"]) for r in cells} == {(a, b) for a in (-1, 0, 1, 2) for b in (-1, 0, 1, 2)}
    assert all(0 <= r["value"] <= 1 for r in cells)
    curves = charts.data_rows(spec_of(report, "agreement_pre"))
    assert {r["metric"] for r in curves} == {"ami", "nmi", "ari", "cka"} and {r["other"] for r in curves} == {"ft"}
    assert {r["k"] for r in curves if r["metric"] != "cka"} == {K}
    diagonal = {r["layer"]: r["value"] for r in curves if r["metric"] == "cka"}
    assert diagonal == {r["layer"]: r["value"] for r in cells if r["layer"] == r["other_layer"]}
    # the CNN layers of both synthetic runs are dominated by one speaker offset per utterance: related
    assert diagonal[-1] > 0.3


def test_probe_balanced_accuracy_is_drawn_with_its_chance_level(report, warehouse):
    spec = spec_of(report, "metric_curves")
    probe = spec["concat"][-1]
    band, accuracy, chance = probe["layer"]
    assert band["mark"]["type"] == "errorband" and band["encoding"]["y"]["field"] == "ci_low"
    assert band["transform"][0]["filter"] == {"field": "metric", "equal": "probe_balanced_accuracy"}
    assert accuracy["transform"][0]["filter"] == {"field": "metric", "equal": "probe_balanced_accuracy"}
    assert chance["transform"][0]["filter"] == {"field": "metric", "equal": "probe_chance"}
    assert chance["mark"]["strokeDash"] == [4, 3]
    rows = charts.data_rows(spec)
    direct = Warehouse(warehouse).connect().execute(
        "select run, layer, metric, value from metrics where tier = 'phone' and subset = 'all' "
        "and metric in ('probe_balanced_accuracy', 'probe_chance')").fetchall()
    drawn = {(r["run"], r["layer"], r["metric"]): r["value"] for r in rows if r["metric"].startswith("probe")}
    assert drawn == {(run, layer, m): round(v, 4) for run, layer, m, v in direct}
    assert len(drawn) == 2 * 4 * 2  # two runs, four layers, accuracy and chance
    for (run, layer, metric), value in drawn.items():
        if metric == "probe_chance":  # 1 / labels in the held-out speakers' frames: 8 phones here
            assert value == round(1 / 7, 4) or value == round(1 / 8, 4), (run, layer, value)
    # the synthetic phones sharpen with depth: the last layer reads them far above chance
    assert drawn[("pre", 2, "probe_balanced_accuracy")] > 3 * drawn[("pre", 2, "probe_chance")]


def test_intervals_analyze_wrote_are_drawn(report):
    """Issue 14 end to end: the intervals, CCA rows and paired differences `analyze` wrote reach the page
    (tests/test_report_intervals.py checks the drawing against hand-made rows, and old warehouses)."""
    rows = charts.data_rows(spec_of(report, "metric_curves"))
    ami = [r for r in rows if r["metric"] == "ami"]
    assert len(ami) == 2 * 4
    page = report[0].read_text()
    for r in ami:  # an interval, or none with its reason (the synthetic corpus has 3 speakers) named on the page
        assert (r["ci_low"] is not None and r["ci_low"] <= r["ci_high"]) or (
            r["null_reason"] and html.escape(r["null_reason"]) in page), r
    names = [f["name"] for f in report[1]["figures"]]
    assert names[1] == "cca_curves"
    table = report[1]["tables"][0]
    assert table["query"] == "report_metric_differences" and table["rows"] > 0
    assert "pre: adjacent layers" in page and "ft: adjacent layers" in page


def test_variants_and_groups_figure(report, warehouse):
    fig = next(f for f in report[1]["figures"] if f["name"] == f"groups_pre_gender_k{K}")
    assert fig["params"] == {"run": "pre", "k": K, "tier": "phone", "by": "gender"}
    assert fig["groups"] == ["female", "male"]
    spec = spec_of(report, fig["name"])
    assert [p["title"] for p in spec["hconcat"]] == ["AMI of the layer's k-means, per gender",
                                                      "k-means: own group vs the other groups",
                                                      "phone probe: own group vs the other groups"]
    rows = charts.data_rows(spec)
    direct = Warehouse(warehouse).connect().execute(
        "select layer, group_value, metric, value from group_metrics where run = 'pre' and attribute = 'gender' "
        "and metric in ('ami', 'ami_within', 'ami_transfer', 'probe_balanced_accuracy_within', "
        "'probe_balanced_accuracy_transfer')").fetchall()
    assert {(r["layer"], r["group_value"], r["metric"]): r["value"] for r in rows} == {
        (layer, g, m): round(v, 4) for layer, g, m, v in direct}
    by_key = {(r["layer"], r["group_value"], r["score"], r["fit"]): r["value"] for r in rows}
    for r in rows:
        within = by_key.get((r["layer"], r["group_value"], r["score"], "within"))
        transfer = by_key.get((r["layer"], r["group_value"], r["score"], "transfer"))
        if within is None or transfer is None:
            assert r["gap"] is None
        else:
            assert r["gap"] == pytest.approx(within - transfer, abs=2e-4)
    # every labelled frame of a layer is scored in its gender's group ('female' is spk-b)
    n = {(r["layer"], r["group_value"]): r["n"] for r in rows if r["metric"] == "ami"}
    labelled = dict(Warehouse(warehouse).connect().execute(
        "select u.metadata['gender'], count(*) from frames f join utterances u using (run, utterance_id) "
        "where f.run = 'pre' and f.layer = 2 and f.phone is not null group by 1").fetchall())
    assert {g: n[(2, g)] for g in ("female", "male")} == labelled
    # the female group has one speaker: its within-group probe (speaker-disjoint) cannot exist
    assert ("female" not in {r["group_value"] for r in rows if r["metric"] == "probe_balanced_accuracy_within"})


def test_transcripts_section(report, warehouse):
    con = Warehouse(warehouse).connect()
    cer = charts.data_rows(spec_of(report, "decoded_cer"))
    assert [(r["run"], r["layer"], r["k"]) for r in cer] == [("pre", layer, K) for layer in (-1, 0, 1, 2)]
    for r in cer:
        edits, chars = con.execute("select sum(n_edits), sum(n_reference_chars) from decoded "
                                   "where run = 'pre' and layer = ? and k = ?", [r["layer"], K]).fetchone()
        assert (r["n_edits"], r["n_reference_chars"]) == (edits, chars) and r["cer"] == round(edits / chars, 4)
        assert r["n_utterances"] == 12
    counts = charts.data_rows(spec_of(report, "disagreement_counts"))
    assert [(r["run"], r["rule"], r["n_disagree"], r["n_references"]) for r in counts] == [
        ("pre", "gap", 0, 3), ("pre", "gap", 1, 3), ("pre", "gap", 2, 3)]
    frames = con.execute("select count(*) from frames where run = 'pre' and layer = -1").fetchone()[0]
    assert sum(r["n_frames"] for r in counts) == frames
    assert sum(r["share"] for r in counts) == pytest.approx(1, abs=1e-3)
    # the maps colour each frame by its own count: the same frames, the same numbers
    disagree = dict(((u, f), n) for u, f, n in con.execute(
        "select utterance_id, frame, n_disagree from frame_disagreement where run = 'pre' and rule = 'gap'").fetchall())
    for name in ("map_tsne_pre_-1_pre_1_pre_2", "map_tsne_runs"):
        points = charts.data_rows(spec_of(report, name))
        assert {(p["utterance_id"], p["frame"]): p["n_disagree"] for p in points} == {
            (p["utterance_id"], p["frame"]): disagree[(p["utterance_id"], p["frame"])] for p in points}
        assert {p["disagreement"] for p in points} == {"0", "1", "2"}
    assert {p["n_disagree"] for p in charts.data_rows(spec_of(report, "map_tsne_ft_-1_ft_1_ft_2"))} == {None}


def test_sections_of_later_stages_are_absent_without_their_tables(report, warehouse, tmp_path):
    path = build_report(["ft"], warehouse=str(warehouse), out=str(tmp_path / "ft"), map_points=100,
                        methods=("pca",), png=False)
    info = json.loads((path.parent / "report.json").read_text())
    assert [f["name"] for f in info["figures"]] == [
        "metric_curves", "cca_curves", "map_pca_ft_-1_ft_1_ft_2", "map_pca_all_layers_ft", f"contingency_ft_k{K}"]
    assert all("disagreement" not in f.get("colourings", []) for f in info["figures"])
    page = path.read_text()
    assert "Variants and groups" not in page and "Transcripts and transcriber disagreement" not in page
    # 'pre' scored by gender at k = 4 only: another k shows no group figure
    con = charts.connect(warehouse)
    assert charts.group_attributes(con, ["pre"], K, "phone") == [
        {"run": "pre", "attribute": "gender", "n_groups": 2, "n_layers": 4}]
    assert charts.group_attributes(con, ["pre"], K + 1, "phone") == []
    assert charts.group_attributes(con, ["ft"], K, "phone") == []


def test_report_on_a_segments_tier(warehouse, tmp_path):
    """--tier ctc_greedy: clusters fitted and scored on the greedy labels (from `segments`, by the
    frame centre), maps and heatmap labelled with them."""
    root = tmp_path / "wh"
    shutil.copytree(warehouse, root)  # the module's warehouse keeps its phone clusterings
    analyze(AnalyzeConfig(run="pre", warehouse=str(root), k=K, sample_per_label=40, tier=T.GREEDY_TIER))
    greedy = {utt: [GREEDY[p] for p in phones] for utt, phones in frame_phones(root, "pre").items()}
    con = charts.connect(root)
    counts = query(None, "report_label_counts", {"run": "pre", "layer": 1, "tier": T.GREEDY_TIER}, con=con)
    expected: dict[str, int] = {}
    for labels in greedy.values():
        for label in labels:
            expected[label] = expected.get(label, 0) + 1
    assert dict(zip(counts["label"].to_pylist(), counts["n_frames"].to_pylist())) == expected
    path = build_report(["pre"], warehouse=str(root), out=str(tmp_path / "out"), map_points=150, methods=("pca",),
                        png=False, tier=T.GREEDY_TIER, recompute=True)
    info = json.loads((path.parent / "report.json").read_text())
    assert info["tier"] == T.GREEDY_TIER
    assert len(info["reductions_computed"]) == 4  # PCA of every layer, recomputed on a ctc_greedy-balanced sample
    sampled = Warehouse(root).connect().execute(
        "select utterance_id, frame, label from reductions where run = 'pre' and layer = 1 and method = 'pca'",
    ).fetchall()
    assert sampled and all(label == greedy[utt][frame] for utt, frame, label in sampled)
    names = [f["name"] for f in info["figures"]]
    assert f"contingency_pre_k{K}_{T.GREEDY_TIER}" in names and f"groups_pre_gender_k{K}" not in names
    curves = charts.data_rows(json.loads((path.parent / "specs" / "metric_curves.vl.json").read_text()))
    assert curves and {r["tier"] for r in curves} == {T.GREEDY_TIER}
    for name in names:
        spec = json.loads((path.parent / "specs" / f"{name}.vl.json").read_text())
        assert vlc.vegalite_to_vega(spec, vl_version="6.4")["marks"], name
        rows = charts.data_rows(spec)
        if name.startswith("map_pca_pre"):
            assert rows and all(r["label"] == greedy[r["utterance_id"]][r["frame"]] for r in rows), name
            assert {r["label_top"] for r in rows} <= set(GREEDY.values())
        if name.startswith("contingency"):
            assert {r["label"] for r in rows} <= set(GREEDY.values())
            for layer in (-1, 1, 2):
                shares = {}
                for r in rows:
                    if r["layer"] == layer:
                        shares[r["label"]] = shares.get(r["label"], 0) + r["share_of_label"]
                assert shares and all(v == pytest.approx(1, abs=1e-3) for v in shares.values())
    assert all(v == 0 for v in run_checks(root).values())
    offered = r"use one of \['ctc_greedy', 'phone', 'word'\]"
    with pytest.raises(ValueError, match=r"run\(s\) \['pre'\] have no tier 'nope': " + offered):
        build_report(["pre"], warehouse=str(root), out=str(tmp_path / "x"), tier="nope")


def test_a_second_build_draws_the_same_charts(report, warehouse, tmp_path):
    assert report[1]["reductions_computed"] == [] and report[1]["commands"] == []  # nothing missing
    build_report("pre,ft", warehouse=str(warehouse), out=str(tmp_path / "again"), map_points=200,
                 methods=("pca", "tsne"), png=False)
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["reductions_computed"] == [] and again["comparisons_computed"] == []
    assert not list((tmp_path / "again" / "png").iterdir())
    for fig in again["figures"]:
        assert json.loads((tmp_path / "again" / "specs" / f"{fig['name']}.vl.json").read_text()) == spec_of(report, fig["name"])


def test_a_run_without_analysis_still_gets_maps(warehouse, tmp_path):
    reduce_many("raw", methods="pca", warehouse=str(warehouse), n=100)
    path = build_report(["raw"], warehouse=str(warehouse), out=str(tmp_path / "raw"), map_points=100,
                        methods=("pca",), png=False)
    info = json.loads((path.parent / "report.json").read_text())
    assert [f["name"] for f in info["figures"]] == ["map_pca_raw_-1_raw_1_raw_2", "map_pca_all_layers_raw"]
    assert info["k"] is None
    assert "No metrics yet" in path.read_text()
    assert "Variants and groups" not in path.read_text() and "Transcripts and" not in path.read_text()


def test_runs_that_cannot_be_compared_get_a_note_instead_of_charts(tmp_path):
    root = tmp_path / "wh"
    make_frames_warehouse(root, run="pre", seed=0, layers=(-1, 1))
    make_frames_warehouse(root, run="geo", seed=1, layers=(-1, 1))
    Warehouse(root).ensure_facts("geo", {"geometry": {"receptive_field_samples": 400, "hop_samples": 160,
                                                      "sample_rate_hz": 16000}})
    for run in ("pre", "geo"):
        reduce_many(run, methods="pca", warehouse=str(root), n=100)
    path = build_report(["pre", "geo"], warehouse=str(root), out=str(tmp_path / "out"), map_points=100,
                        methods=("pca",), png=False)
    info = json.loads((path.parent / "report.json").read_text())
    assert info["comparisons_computed"] == [] and "different frame geometry" in info["comparisons_refused"]["geo"]
    assert not [f for f in info["figures"] if f["query"].startswith("compare_")]
    note = "Not compared with geo: runs &#x27;pre&#x27; and &#x27;geo&#x27; have different frame geometry"
    assert note in path.read_text()


def test_the_report_only_reads_and_names_what_to_run(first_build, warehouse):
    """Regression: the report computed missing reductions and comparisons itself, writing to the
    warehouse behind the user's back. It now draws what is committed and names the commands."""
    path, info, before, after = first_build
    assert after == before  # not one file of the warehouse written or touched
    assert info["reductions_computed"] == [] and info["comparisons_computed"] == []
    w = f" --warehouse {warehouse}"
    assert info["commands"] == [f"python -m pipeline reduce --run pre --methods pca{w}",
                                f"python -m pipeline reduce --run pre --layers=-1,1,2 --methods tsne{w}",
                                f"python -m pipeline reduce --run ft --methods pca{w}",
                                f"python -m pipeline reduce --run ft --layers=-1,1,2 --methods tsne{w}",
                                f"python -m pipeline compare --runs pre,ft{w}"]
    assert info["comparisons"]["ft"]["state"] == "missing"
    names = [f["name"] for f in info["figures"]]
    assert not [n for n in names if n.startswith(("map_", "cka_", "agreement_"))]
    assert "metric_curves" in names and f"contingency_pre_k{K}" in names and "decoded_cer" in names
    page = path.read_text()
    for command in info["commands"]:
        assert command in page  # in the list at the top, and again in its section
    assert f"Not reduced yet (t-SNE of CNN, layer 1, layer 2): run `python -m pipeline reduce --run pre " \
           f"--layers=-1,1,2 --methods tsne{w}`." in page
    assert f"Not compared with ft yet: run `python -m pipeline compare --runs pre,ft{w}`." in page


def test_recompute_and_compare_n_run_the_stages_visibly(report, warehouse, tmp_path, caplog):
    root = tmp_path / "wh"
    shutil.copytree(warehouse, root)  # the module's warehouse keeps its reductions and comparison
    caplog.set_level("WARNING", logger="pipeline.report")
    path = build_report(["pre", "ft"], warehouse=str(root), out=str(tmp_path / "a"), map_points=150,
                        methods=("pca",), png=False, compare_n=300)
    info = json.loads((path.parent / "report.json").read_text())
    assert info["comparisons_computed"] == [] and info["reductions_computed"] == []  # the comparison is current
    assert not [r for r in caplog.records if r.name == "pipeline.report"]
    path = build_report(["pre", "ft"], warehouse=str(root), out=str(tmp_path / "b"), map_points=150,
                        methods=("pca",), png=False, compare_n=300, recompute=True)
    info = json.loads((path.parent / "report.json").read_text())
    assert [(r["run"], r["layer"], r["method"]) for r in info["reductions_computed"]] == [
        (run, layer, "pca") for run in ("pre", "ft") for layer in (-1, 0, 1, 2)]
    compared = [(c["run"], c["other"], c["frames"], c["k"]) for c in info["comparisons_computed"]]
    assert compared == [("pre", "ft", 300, K)]
    logged = [r.getMessage() for r in caplog.records if r.name == "pipeline.report"]
    assert logged == [f"report --recompute: running `reduce --run {run} --layers=-1,0,1,2 --methods pca --n 150 "
                      "--seed 0 --tier phone`" for run in ("pre", "ft")] + [
        f"report: running `compare --runs pre,ft --n 300 --seed 0 --k {K}`"]
    con = Warehouse(root).connect()
    assert con.execute("select distinct n from cka where run = 'pre' and other = 'ft'").fetchall() == [(300,)]
    n_map = con.execute("select count(*) from reductions where run = 'pre' and layer = 1 and method = 'pca'").fetchone()
    assert n_map[0] <= 150  # redone on the report's sample (the committed one held every labelled frame)


def test_missing_maps_are_named_in_one_logged_line(tmp_path, caplog):
    root = tmp_path / "wh"
    make_frames_warehouse(root, run="solo", seed=0, layers=(-1, 1))
    caplog.set_level("WARNING", logger="pipeline.report")
    path = build_report(["solo"], warehouse=str(root), out=str(tmp_path / "out"), map_points=100,
                        methods=("pca", "umap"), png=False)
    w = f" --warehouse {root}"
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.report"] == [
        f"report for solo: 1 command(s) would complete it: python -m pipeline reduce --run solo --methods pca,umap{w}"]
    assert f"Not reduced yet (PCA, UMAP of CNN, layer 1): run `python -m pipeline reduce --run solo " \
           f"--methods pca,umap{w}`." in path.read_text()
    assert not (root / "reductions").exists()


def test_unknown_run_is_an_error_that_names_the_runs(warehouse, tmp_path):
    with pytest.raises(ValueError, match=r"run 'nope' has no extracted frames.*'pre'"):
        build_report(["nope"], warehouse=str(warehouse), out=str(tmp_path / "x"))


def test_key_layers():
    assert key_layers([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) == [-1, 6, 12]
    assert key_layers([-1, 0, 1, 2]) == [-1, 1, 2]
    assert key_layers([3]) == [3]
    assert key_layers([0, 12]) == [0, 12]
    assert key_layers([-2, -1, 0, 1, 2]) == [-1, 1, 2]  # the log-mel layer is not the "CNN" map
    assert key_layers([-2]) == [-2]


# ------------------------------------------------------------------------------------------- phone classes
TIMIT_61 = ("b d g p t k dx q bcl dcl gcl pcl tcl kcl jh ch s sh z zh f th v dh m n ng em en eng nx l r w y hh "
            "hv el iy ih eh ey ae aa aw ay ah ao oy ow uh uw ux er ax ix axr ax-h pau epi h#").split()


def test_every_timit_phone_has_a_class():
    assert len(TIMIT_61) == 61 == len(TIMIT)
    classes = classify(TIMIT_61)
    assert detect_inventory(TIMIT_61) == "timit"
    assert "other" not in classes.values()
    assert classes["bcl"] == "closure" and classes["h#"] == "silence" and classes["dx"] == "stop"
    assert classes["ey"] == "diphthong" and classes["ax-h"] == "vowel" and classes["el"] == "approximant"


def test_arpabet_with_stress_digits():
    labels = ["AH0", "IY1", "EY2", "T", "D", "V", "TH", "NG", "sil", "sp", "spn", ""]
    classes = classify(labels)
    assert detect_inventory(labels) == "arpabet"
    assert classes == {"AH0": "vowel", "IY1": "vowel", "EY2": "diphthong", "T": "stop", "D": "stop",
                       "V": "fricative", "TH": "fricative", "NG": "nasal", "sil": "silence", "sp": "silence",
                       "spn": "other", "": "silence"}
    assert set(ARPABET.values()) <= set(CLASSES)


def test_espeak_labels_follow_the_embedded_json():
    table = embedded_classes()
    if not table:
        pytest.skip("pipeline/corpus/embedded/phone_classes.json is not there")
    assert classify(table) == table
    # the same letters mean other sounds in espeak-ng than in ARPAbet
    espeak = classify(["sil", "T", "D", "V", "I", "@", "oU"])
    assert espeak["T"] == "fricative" and espeak["D"] == "fricative" and espeak["V"] == "vowel"


# ------------------------------------------------------------------------------------------- browser
PROBE = """<script>
window.reportReady.then(async () => {
  const result = {};
  const el = document.getElementById("FIG");
  const opacities = () => { const o = {}; el.querySelectorAll("g.mark-symbol.role-mark path").forEach((p) => {
    const v = p.getAttribute("opacity"); o[v] = (o[v] || 0) + 1; }); return o; };
  result.before = opacities();
  const label = [...el.querySelectorAll("g.role-legend-label text")].find((t) => t.textContent === "LABEL");
  const symbol = label.parentNode.parentNode.parentNode.querySelector("g.role-legend-symbol path");
  const box = symbol.getBoundingClientRect();
  for (const type of ["pointerdown", "mousedown", "pointerup", "mouseup", "click"]) {
    symbol.dispatchEvent(new MouseEvent(type, {bubbles: true, view: window,
      clientX: box.x + box.width / 2, clientY: box.y + box.height / 2}));
  }
  await new Promise((done) => setTimeout(done, 500));
  result.after = opacities();
  document.body.dataset.probe = JSON.stringify(result);
});
</script>"""


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, so the browser test must run")
        pytest.skip(reason)
    cmd = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]


@pytest.mark.slow
def test_chromium_renders_every_chart_offline_and_legend_clicks_highlight_across_panels(report, tmp_path):
    out = report[0].parent
    figures = report[1]["figures"]
    page = report[0].read_text()
    target = next(f for f in figures if f["name"] == "map_tsne_runs")
    probe = PROBE.replace("FIG", target["div"]).replace("LABEL", "a")  # the phone 'a' in the phone legend
    cut = page.rindex("</body></html>")
    (out / "probe.html").write_text(page[:cut] + probe + page[cut:])
    done = chromium(["--dump-dom", (out / "probe.html").as_uri()], tmp_path)
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert not console_errors(done.stderr), console_errors(done.stderr)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-rendered="{len(figures)}"' in body and 'data-failed="0"' in body, body[:300]
    starts = sorted((dom.index(f'id="{f["div"]}"'), f["name"]) for f in figures)
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(dom), "")]):
        chunk = dom[start:end]
        assert len(re.findall(r'<svg[^>]*class="marks"', chunk)) == 1, name
        marks = re.findall(r'class="mark-(symbol|rect|line)[^"]*"(.*?)</g>', chunk, re.S)
        assert sum(m[1].count("<path") for m in marks) > 0, f"{name}: nothing drawn"
    chunks = {name: dom[start:end] for (start, name), (end, _) in zip(starts, starts[1:] + [(len(dom), "")])}
    # the probe panel draws the chance level as a dashed line
    assert 'stroke-dasharray="4,3"' in chunks["metric_curves"]
    # groups, one line each: AMI per gender (2); k-means within and transfer per gender (4); the probe
    # within and transfer for 'male', transfer only for 'female' (one speaker: no disjoint split) (3)
    group_lines = re.findall(r'class="mark-line role-mark[^"]*"(.*?)</g>', chunks[f"groups_pre_gender_k{K}"], re.S)
    assert len(group_lines) == 9 and all(g.count("<path") == 1 for g in group_lines), len(group_lines)
    assert 'stroke-dasharray="5,3"' in chunks[f"groups_pre_gender_k{K}"]
    # one bar per disagreement count (0, 1, 2 references)
    bars = re.search(r'class="mark-rect role-mark[^"]*"(.*?)</g>', chunks["disagreement_counts"], re.S).group(1)
    assert bars.count("<path") == 3
    assert len(re.findall(r'class="mark-line role-mark', chunks["decoded_cer"])) == 1
    # the maps of 'pre' have a row coloured by the count, with its legend
    assert ">references disagreeing</text>" in chunks["map_tsne_pre_-1_pre_1_pre_2"]
    assert ">references disagreeing</text>" not in chunks["map_tsne_ft_-1_ft_1_ft_2"]
    heat = next(f for f in figures if f["name"] == "cka_pre_ft")
    start = dom.index(f'id="{heat["div"]}"')
    chunk = dom[start:dom.index("</svg>", start)]
    texts = re.search(r'class="mark-text role-mark[^"]*"[^>]*>(.*?)</g>', chunk, re.S).group(1)
    drawn = sorted(re.findall(r">([0-9.]+)</text>", texts))
    expected = sorted(f"{r['value']:.2f}" for r in charts.data_rows(spec_of(report, "cka_pre_ft")))
    assert drawn == expected  # every cell of the CKA heatmap carries its value
    probe_result = json.loads(re.search(r'data-probe="([^"]*)"', body).group(1).replace("&quot;", '"'))
    before, after = probe_result["before"], probe_result["after"]
    assert set(before) == {"0.85"}, before  # nothing selected: every point drawn opaque
    dimmed, kept = after.get("0.06", 0), after.get("0.85", 0)
    assert dimmed > 0 and kept > 0 and dimmed + kept <= sum(before.values()), after
    # the same frames in the 3 panels × 6 colourings (disagreement included) are highlighted
    assert len(target["colourings"]) == 6 and kept % 18 == 0, after


@pytest.mark.slow
def test_chromium_screenshot_is_not_blank(report, tmp_path):
    shot = report[0].parent / "screenshot.png"
    done = chromium(["--window-size=1400,2400", f"--screenshot={shot}", report[0].as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not console_errors(done.stderr), console_errors(done.stderr)
    assert_not_blank(shot)
    keep = os.environ.get("REPORT_SCREENSHOT")
    if keep:  # look at it: REPORT_SCREENSHOT=/tmp/shot.png pytest -m slow -k screenshot
        shutil.copy(shot, keep)
