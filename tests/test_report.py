"""pipeline.report / charts / phone_classes: specs validate, data come from the named queries, the
HTML is self-contained and includes every chart, PNGs are drawn; a headless Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import vl_convert as vlc
from altair.vegalite.v6.schema import load_schema

from pipeline import charts
from pipeline.analyze import AnalyzeConfig, analyze
from pipeline.phone_classes import ARPABET, CLASSES, TIMIT, classify, detect_inventory, embedded_classes
from pipeline.report import build_report, key_layers
from pipeline.sql import query
from pipeline.warehouse import Warehouse
from test_reduce import make_frames_warehouse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
K = 4


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """Two runs of one synthetic corpus ('pre', 'ft'), analysed with k = 4, and one not analysed ('raw')."""
    root = tmp_path_factory.mktemp("report") / "wh"
    for run, seed in [("pre", 0), ("ft", 1), ("raw", 2)]:
        make_frames_warehouse(root, run=run, seed=seed)
    for run in ("pre", "ft"):
        analyze(AnalyzeConfig(run=run, warehouse=str(root), k=K, sample_per_label=40))
    return root


@pytest.fixture(scope="module")
def report(warehouse, tmp_path_factory) -> tuple[Path, dict]:
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
    assert report[1]["k"] == K


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
    assert [(c["run"], c["other"], c["k"]) for c in report[1]["comparisons_computed"]] == [("pre", "ft", K)]
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


def test_a_second_build_reuses_the_reductions(report, warehouse, tmp_path):
    assert len(report[1]["reductions_computed"]) == 2 * (4 + 3)  # PCA of 4 layers, t-SNE of 3, per run
    build_report("pre,ft", warehouse=str(warehouse), out=str(tmp_path / "again"), map_points=200,
                 methods=("pca", "tsne"), png=False)
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["reductions_computed"] == [] and again["comparisons_computed"] == []
    assert not list((tmp_path / "again" / "png").iterdir())
    for fig in again["figures"]:
        assert json.loads((tmp_path / "again" / "specs" / f"{fig['name']}.vl.json").read_text()) == spec_of(report, fig["name"])


def test_a_run_without_analysis_still_gets_maps(warehouse, tmp_path):
    path = build_report(["raw"], warehouse=str(warehouse), out=str(tmp_path / "raw"), map_points=100,
                        methods=("pca",), png=False)
    info = json.loads((path.parent / "report.json").read_text())
    assert [f["name"] for f in info["figures"]] == ["map_pca_raw_-1_raw_1_raw_2", "map_pca_all_layers_raw"]
    assert info["k"] is None
    assert "No metrics yet" in path.read_text()


def test_runs_that_cannot_be_compared_get_a_note_instead_of_charts(tmp_path):
    root = tmp_path / "wh"
    make_frames_warehouse(root, run="pre", seed=0, layers=(-1, 1))
    make_frames_warehouse(root, run="geo", seed=1, layers=(-1, 1))
    Warehouse(root).ensure_facts("geo", {"geometry": {"receptive_field_samples": 400, "hop_samples": 160,
                                                      "sample_rate_hz": 16000}})
    path = build_report(["pre", "geo"], warehouse=str(root), out=str(tmp_path / "out"), map_points=100,
                        methods=("pca",), png=False)
    info = json.loads((path.parent / "report.json").read_text())
    assert info["comparisons_computed"] == [] and "different frame geometry" in info["comparisons_refused"]["geo"]
    assert not [f for f in info["figures"] if f["query"].startswith("compare_")]
    note = "Not compared with geo: runs &#x27;pre&#x27; and &#x27;geo&#x27; have different frame geometry"
    assert note in path.read_text()


def test_unknown_run_is_an_error_that_names_the_runs(warehouse, tmp_path):
    with pytest.raises(ValueError, match=r"run 'nope' has no extracted frames.*'pre'"):
        build_report(["nope"], warehouse=str(warehouse), out=str(tmp_path / "x"))


def test_key_layers():
    assert key_layers([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) == [-1, 6, 12]
    assert key_layers([-1, 0, 1, 2]) == [-1, 1, 2]
    assert key_layers([3]) == [3]
    assert key_layers([0, 12]) == [0, 12]


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
        pytest.skip("pipeline/embedded/phone_classes.json is not there")
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
    # the same frames in the 3 panels × 5 colourings are highlighted: a multiple of 15
    assert kept % 15 == 0, after


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
