"""Label tiers keep to one maker, clusterings to one tier, tier names to what paths can hold."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.report import charts
from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.stages.labels import TierConflict, labels
from pipeline.stages.reduce import reduce
from pipeline.report import build_report
from pipeline.warehouse.schemas import check_tier_name, tiered_views
from pipeline.sql import query, run_checks
from pipeline.stages.transcripts import TranscriptsConfig, transcripts
from pipeline.warehouse import Warehouse
from pipeline.testing import make_timit, save_tiny_ctc, segments_of

REPO = Path(__file__).resolve().parents[1]


def _labels_cli(wh: Path, model: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "labels", "--run", "r", "--model", str(model), "--warehouse", str(wh),
           "--device", "cpu"]
    environ = {k: v for k, v in os.environ.items() if k != "PIPELINE_KILL_AT"}
    return subprocess.run(cmd, env={**environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_models_run(tmp_path_factory):
    """(extracted warehouse with 2 shards and no labels, CTC model A, CTC model B with other weights)."""
    base = tmp_path_factory.mktemp("tiers")
    model_a, model_b = save_tiny_ctc(base / "a", seed=0), save_tiny_ctc(base / "b", seed=1)
    wh = base / "wh"
    extract(ExtractConfig(run="r", model=str(model_a), format="timit", corpus=str(make_timit(base / "timit")),
                          warehouse=str(wh), layers="2", shard_size=2, progress=False, device="cpu"))
    return wh, model_a, model_b


@pytest.mark.slow
def test_killed_labels_rerun_with_another_model_refuses_and_the_same_model_completes(two_models_run, tmp_path):
    base, model_a, model_b = two_models_run
    whole = tmp_path / "whole"
    shutil.copytree(base, whole)
    done = _labels_cli(whole, model_a)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = segments_of(whole, "ctc_greedy")
    assert len(expected) == 4

    wh = tmp_path / "wh"
    shutil.copytree(base, wh)
    killed = _labels_cli(wh, model_a, PIPELINE_KILL_AT="before_commit:2")  # shard 0 committed, shard 1 not
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = segments_of(wh, "ctc_greedy")
    assert len(partial) == 2
    # the partial tier is not scored as if it were whole
    with pytest.raises(ValueError, match=r"run 'r': tier 'ctc_greedy' has no labels for shard\(s\) \[1\]"):
        analyze(AnalyzeConfig(run="r", warehouse=str(wh), tier="ctc_greedy", k=2, layers="2", probe=False))
    # another model on the partial tier: refused, naming run, tier, both models and what to do; nothing written
    commits_before = Warehouse(wh).commits("r")
    with pytest.raises(TierConflict) as err:
        labels("r", str(model_b), warehouse=str(wh), device="cpu")
    message = str(err.value)
    for part in ("run 'r'", "tier 'ctc_greedy'", str(model_a), str(model_b), "(1 of 2 shards", "--tier-name NEW",
                 "--overwrite-tier"):
        assert part in message
    assert Warehouse(wh).commits("r") == commits_before
    assert segments_of(wh, "ctc_greedy") == partial
    # the same model labels only the missing shard: the tier equals an uninterrupted run's
    resumed = _labels_cli(wh, model_a)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(1 already committed)" in resumed.stdout
    assert segments_of(wh, "ctc_greedy") == expected
    assert set(run_checks(wh).values()) == {0}


@pytest.mark.slow
def test_another_model_writes_a_new_tier_or_replaces_the_old_one_whole(two_models_run, tmp_path):
    base, model_a, model_b = two_models_run
    wh = tmp_path / "wh"
    shutil.copytree(base, wh)
    labels("r", str(model_a), warehouse=str(wh), device="cpu")
    made_by_a = segments_of(wh, "ctc_greedy")
    counts = labels("r", str(model_b), warehouse=str(wh), device="cpu", tier_name="ctc_b")
    assert (counts.shards, counts.utterances) == (2, 4)
    made_by_b = segments_of(wh, "ctc_b")
    assert segments_of(wh, "ctc_greedy") == made_by_a and made_by_b != made_by_a
    names = sorted(p.name.split(".")[0] for p in (wh / "segments" / "run=r").glob("ctc_b-*"))  # <tier>-<shard>.<writer>
    assert names == ["ctc_b-00000", "ctc_b-00001"]
    # a corpus tier is never written; a taken tier of another kind (greedy into a forced stage) is refused
    with pytest.raises(TierConflict, match=r"tier\(s\) \['phone'\] come from the corpus"):
        labels("r", str(model_b), warehouse=str(wh), device="cpu", tier_name="phone")
    labels("r", str(model_a), warehouse=str(wh), device="cpu", source="forced", tier_name="fa")
    assert set(segments_of(wh, "fa_char")) == set(segments_of(wh, "fa_word")) == set(made_by_a)
    with pytest.raises(TierConflict, match=r"tier 'fa_char' was made by .*--source forced"):
        labels("r", str(model_a), warehouse=str(wh), device="cpu", tier_name="fa_char")
    # replacing: every old shard is superseded first, so a killed overwrite leaves B's shards only
    env = {"PIPELINE_KILL_AT": "before_commit:4"}  # 2 superseding commits, B's shard 0, killed before shard 1
    cmd = [sys.executable, "-c", "import sys; from pipeline.stages.labels import labels; "
           "labels('r', sys.argv[1], warehouse=sys.argv[2], device='cpu', overwrite_tier=True)", str(model_b), str(wh)]
    killed = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    half = segments_of(wh, "ctc_greedy")
    assert len(half) == 2 and all(half[u] == made_by_b[u] for u in half)
    with pytest.raises(TierConflict, match=f"tier 'ctc_greedy' was made by model '{model_b}'"):
        labels("r", str(model_a), warehouse=str(wh), device="cpu")
    finished = labels("r", str(model_b), warehouse=str(wh), device="cpu")
    assert (finished.shards, finished.skipped_shards) == (1, 1)
    assert segments_of(wh, "ctc_greedy") == made_by_b
    assert set(run_checks(wh).values()) == {0}


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    wh = tmp_path_factory.mktemp("wh")
    extract(ExtractConfig(run="emb", warehouse=str(wh), limit=24, layers="1", shard_size=12, progress=False))
    return wh


def _phone_view(wh: Path) -> dict:
    con = charts.connect(wh)
    contingency = query(None, "report_contingency", {"run": "emb", "k": 3, "layers": "1", "tier": "phone"}, con=con)
    clusters = query(None, "clusters_of", {"run": "emb", "layer": 1, "k": 3, "tier": "phone"}, con=con)
    return {"contingency": contingency.to_pylist(), "clusters": clusters.to_pylist()}


def test_clusterings_of_two_tiers_with_one_k_are_both_kept(embedded_run):
    kwargs = dict(run="emb", warehouse=str(embedded_run), k=3, layers="1", sample_per_label=20, n_iter=5, probe=False)
    analyze(AnalyzeConfig(tier="phone", **kwargs))
    phone_only = _phone_view(embedded_run)
    analyze(AnalyzeConfig(tier="word", **kwargs))
    assert _phone_view(embedded_run) == phone_only
    con = charts.connect(embedded_run)
    found = query(None, "clusterings", {"run": "emb"}, con=con).to_pylist()
    assert found == [{"layer": 1, "k": 3, "tier": "phone"}, {"layer": 1, "k": 3, "tier": "word"}]
    word = query(None, "clusters_of", {"run": "emb", "layer": 1, "k": 3, "tier": "word"}, con=con).to_pylist()
    assert len(word) == len(phone_only["clusters"]) and word != phone_only["clusters"]  # two different k-means
    names = sorted(p.name.split(".")[0] for p in (embedded_run / "clusters" / "run=emb" / "layer=1" / "k=3").iterdir())
    assert names == ["phone-00000", "phone-00001", "word-00000", "word-00001"]
    centroids = con.sql("select tier, count(*) from centroids group by tier order by tier").fetchall()
    assert centroids == [("phone", 3), ("word", 3)]
    assert set(run_checks(embedded_run).values()) == {0}


def test_clusterings_from_before_tiers_are_read_as_phone_only_where_that_is_certain():
    con = duckdb.connect()
    con.execute("create view metrics as select * from (values ('a', 1, 3, 'phone'), ('a', 2, 3, 'phone'), "
                "('a', 2, 3, 'word')) m(run, layer, k, tier)")
    # an old file per layer (no tier column): layer 2 was also analysed on words, so its one file holds
    # whichever ran last: left out
    con.execute("create view clusters as select * from (values ('a', 1, 3, 'u', 0, 2), ('a', 2, 3, 'u', 0, 1)) "
                "c(run, layer, k, utterance_id, frame, cluster)")
    tiered_views(con)
    tiered_views(con)  # idempotent
    assert con.sql("select layer, tier from clusters").fetchall() == [(1, "phone")]
    # old and new files in one view: new rows keep their tier, old ones follow the same rule
    con.execute("drop view clusters")
    con.execute("drop view _clusters_files")
    con.execute("create view clusters as select * from (values ('a', 1, 3, 'u', 0, 2, null), "
                "('a', 2, 3, 'u', 0, 1, null), ('a', 2, 3, 'u', 0, 0, 'word')) "
                "c(run, layer, k, utterance_id, frame, cluster, tier)")
    tiered_views(con)
    assert con.sql("select layer, cluster, tier from clusters order by all").fetchall() == [
        (1, 2, "phone"), (2, 0, "word")]


@pytest.mark.parametrize("name", ["ipa/narrow", "../up", "1st", "", "a b", "ipa\n", "x" * 51, "inf", "Epoch",
                                  "tab\t", "ü"])
def test_tier_names_that_paths_cannot_hold_are_refused(name):
    with pytest.raises(ValueError, match="letters, digits, '_', '.', '-', starting with a letter"):
        check_tier_name(name)


def test_every_entry_point_checks_the_tier_name(tmp_path):
    wh = str(tmp_path)
    allowed = "use letters, digits"
    for call in (lambda: labels("r", "any-model", warehouse=wh, tier_name="ipa/narrow"),
                 lambda: labels("r", "any-model", warehouse=wh, source="forced", tier_name="x" * 46),  # x…x_char
                 lambda: analyze(AnalyzeConfig(run="r", warehouse=wh, tier="ipa/narrow")),
                 lambda: reduce("r", 0, "pca", warehouse=wh, tier="ipa/narrow"),
                 lambda: build_report("r", warehouse=wh, out=str(tmp_path / "out"), tier="ipa/narrow"),
                 lambda: transcripts(TranscriptsConfig(run="r", warehouse=wh, tier="ipa/narrow"))):
        with pytest.raises(ValueError, match=allowed):
            call()
    for name in ("ipa_narrow", "ipa.narrow", "ctc-greedy", "IPA2"):
        assert check_tier_name(name) == name
