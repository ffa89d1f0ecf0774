"""pipeline.stages.compare: linear CKA between the layers of two runs and agreement of their clusterings.

Runs are made by the project's own extract: one tiny generated TIMIT-layout corpus through two
tiny random wav2vec2 models (other seeds), plus copies of run A written with permuted, rotated or
scaled vectors (CKA must not see the difference), pure noise, renamed utterances, other geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.stages.compare import CKA_SCHEMA, analysed, common_k, compare
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.warehouse.schemas import frames_schema
from pipeline.sql import query, run_checks
from pipeline.warehouse import Warehouse
from pipeline.warehouse import vectors as vector_encoding
from pipeline.testing import gram_cka, make_timit, tiny_config, tone, write_timit_utt

PHONES = ["h#", "sh", "iy", "s", "aa", "n", "t", "h#"]
LAYERS = [-2, -1, 0, 1, 2]  # log-mel (80-d), the tiny models: CNN (16-d), transformer input and 2 layers (32-d)


def save_tiny_model(folder: Path, seed: int) -> Path:
    """A tiny random wav2vec2 (group norm, the real 400/320 frame geometry) from torch seed `seed`."""
    import transformers

    torch.manual_seed(seed)
    transformers.AutoModel.from_config(tiny_config("wav2vec2-group")).save_pretrained(folder)
    return folder


def make_corpus(root: Path, n_utts: int = 20) -> Path:
    """TIMIT-layout utterances of 0.6–1.5 s, each a tone of its own pitch, 8 phones each."""
    make_timit(root)
    rng = np.random.default_rng(7)
    for i in range(n_utts):
        n = int(rng.integers(9_600, 24_000))
        phones = [PHONES[0], *rng.permutation(PHONES[1:-1]), PHONES[-1]]
        write_timit_utt(root, f"TRAIN/DR2/SPK{i % 4}/SX{i:03d}", n, phones=phones, fmt="WAV",
                        wave=tone(n, freq_hz=110 + 37 * i, seed=i))
    return root


def copy_run(root: Path, src: str, dst: str, transform, rename=None, facts_update: dict | None = None,
             n_samples_delta: int = 0) -> str:
    """Write run `dst` = run `src` with every layer's vectors replaced by transform(x, layer)
    (stored float32), utterance ids renamed by `rename`, facts changed by `facts_update`."""
    wh = Warehouse(root)
    facts = {k: v for k, v in wh.read_facts(src).items() if k not in ("schema_version", "package_version")}
    wh.ensure_facts(dst, {**facts, "dtype": "float32", **(facts_update or {})})
    rename = rename or (lambda uid: uid)
    by_shard: dict[int, list] = {}
    for path in wh.committed_files("utterances", src):
        table = pq.read_table(root / path)
        ids = pa.array([rename(u) for u in table["utterance_id"].to_pylist()], pa.string())
        table = table.set_column(0, "utterance_id", ids)
        table = table.set_column(table.schema.get_field_index("n_samples"), "n_samples",
                                 pa.array(table["n_samples"].to_numpy() + n_samples_delta, pa.int64()))
        shard = int(path.rsplit("part-", 1)[1].split(".")[0])
        by_shard.setdefault(shard, []).append(wh.write("utterances", table, dst, shard))
    for path in wh.committed_files("frames", src):
        layer = int(path.split("layer=")[1].split("/")[0])
        table = pq.read_table(root / path, columns=["utterance_id", "frame", "time_s", "phone", "word", "vector"])
        x = np.asarray(transform(vector_encoding.matrix(table), layer), np.float32)
        ids = pa.array([rename(u) for u in table["utterance_id"].to_pylist()], pa.string())
        out = pa.table({"utterance_id": ids, "frame": table["frame"], "time_s": table["time_s"],
                        "phone": table["phone"], "word": table["word"],
                        "vector": vector_encoding.encode(x, "float32")},
                       schema=frames_schema(x.shape[1], "float32"))
        shard = int(path.rsplit("part-", 1)[1].split(".")[0])
        by_shard.setdefault(shard, []).append(wh.write("frames", out, dst, shard, layer=layer))
    for shard, files in by_shard.items():
        wh.commit(dst, "extract", shard, files)
    return dst


def _rng(layer: int) -> np.random.Generator:
    return np.random.default_rng(100 + layer)


TRANSFORMS = {
    "permuted": lambda x, layer: x[:, _rng(layer).permutation(x.shape[1])],
    "rotated": lambda x, layer: x @ np.linalg.qr(_rng(layer).standard_normal((x.shape[1], x.shape[1])))[0],
    "scaled": lambda x, layer: 7.25 * x + 3.0,  # isotropic scale (and a shift, which centring removes)
}


@pytest.fixture(scope="module")
def wh(tmp_path_factory) -> Path:
    """Runs A and B (one corpus, two tiny models), A analysed with k = 3 and 4, B with k = 4 and 5,
    and copies of A: permuted, rotated, scaled, noise."""
    tmp = tmp_path_factory.mktemp("compare")
    corpus = make_corpus(tmp / "corpus")
    root = tmp / "wh"
    for run, seed in [("A", 1), ("B", 2)]:
        model = save_tiny_model(tmp / f"model-{run}", seed)
        extract(ExtractConfig(run=run, model=str(model), format="timit", corpus=str(corpus), warehouse=str(root),
                              shard_size=8, device="cpu", progress=False))
    for run, ks in [("A", (3, 4)), ("B", (4, 5))]:
        for k in ks:
            analyze(AnalyzeConfig(run=run, warehouse=str(root), k=k, sample_per_label=30, n_iter=10))
    for name, fn in TRANSFORMS.items():
        copy_run(root, "A", name, fn)
    copy_run(root, "A", "noise", lambda x, layer: np.random.default_rng(layer + 5).standard_normal(x.shape))
    return root


def matrix(table: pa.Table, column: str = "value") -> dict[tuple[int, int], float]:
    return {(r["layer"], r["other_layer"]): r[column] for r in table.to_pylist()}


def frames_of(root: Path, run: str, layer: int) -> dict[tuple[str, int], np.ndarray]:
    """Every committed frame of one layer, read with pyarrow alone (no SQL)."""
    wh = Warehouse(root)
    out = {}
    for path in wh.committed_files("frames", run):
        if f"/layer={layer}/" in path:
            t = pq.read_table(root / path, columns=["utterance_id", "frame", "vector"])
            for uid, frame, v in zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist(), vector_encoding.matrix(t)):
                out[(uid, frame)] = v
    return out


# ------------------------------------------------------------------------------------------- CKA
def test_a_run_against_itself_is_one_on_the_diagonal_and_symmetric(wh):
    result = compare(("A", "A"), warehouse=str(wh), n=400)
    for column in ("value", "value_debiased"):
        m = matrix(result["cka"], column)
        assert set(m) == {(a, b) for a in LAYERS for b in LAYERS}
        for a in LAYERS:
            assert m[(a, a)] == pytest.approx(1.0, abs=1e-12)
            for b in LAYERS:
                assert m[(a, b)] == pytest.approx(m[(b, a)], abs=1e-12)
        assert all(v <= 1 + 1e-12 for v in m.values())
    biased = matrix(result["cka"])
    assert all(v >= 0 for v in biased.values())
    assert biased[(-1, 2)] < 0.99  # the layers are not all the same representation
    assert result["frames"] == 400 and result["k"] == 4  # the largest k both "runs" have


@pytest.mark.parametrize("copy", list(TRANSFORMS))
def test_cka_does_not_see_permutation_rotation_or_isotropic_scaling(wh, copy):
    reference = matrix(compare(("A", "A"), warehouse=str(wh), n=400)["cka"])
    result = compare(("A", copy), warehouse=str(wh), n=400)
    got = matrix(result["cka"])
    for a in LAYERS:
        assert got[(a, a)] == pytest.approx(1.0, abs=1e-5), (copy, a)
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, abs=1e-5), (copy, key)


def test_cka_against_noise_is_low(wh):
    result = compare(("A", "noise"), warehouse=str(wh), n=2000)
    n = result["frames"]
    assert n > 900  # every shared frame
    biased, debiased = matrix(result["cka"]), matrix(result["cka"], "value_debiased")
    # biased linear CKA of independent data ~ d / n (here ≤ 32 / 900); the debiased one ~ 0
    assert max(biased.values()) < 0.1, biased
    assert max(abs(v) for v in debiased.values()) < 0.02, debiased
    self_cka = matrix(compare(("A", "A"), warehouse=str(wh), n=2000)["cka"])
    assert max(biased.values()) < 0.2 * min(self_cka.values())


def test_cka_equals_a_direct_numpy_computation_on_the_same_sample(wh):
    result = compare(("A", "B"), warehouse=str(wh), n=300, seed=3)
    keys = query(wh, "compare_shared_keys", {"run": "A", "layer": -1, "other": "B", "other_layer": -1,
                                             "n": 300, "seed": 3})
    sample = list(zip(keys["utterance_id"].to_pylist(), keys["frame"].to_pylist()))
    assert len(sample) == len(set(sample)) == 300 == result["frames"]
    got, got_debiased = matrix(result["cka"]), matrix(result["cka"], "value_debiased")
    samples = {}
    for run in ("A", "B"):
        for layer in LAYERS:
            frames = frames_of(wh, run, layer)
            samples[(run, layer)] = np.stack([frames[key] for key in sample]).astype(np.float64)
    for a in LAYERS:
        x = samples[("A", a)]
        for b in LAYERS:
            y = samples[("B", b)]
            assert got[(a, b)] == pytest.approx(gram_cka(x, y, debiased=False), abs=1e-6), (a, b)
            assert got_debiased[(a, b)] == pytest.approx(gram_cka(x, y, debiased=True), abs=1e-6), (a, b)
    models = {pair: v for pair, v in got.items() if -2 not in pair}  # the log-mel layer is the audio's, not a model's
    assert 0.0 < min(models.values()) and max(models.values()) < 0.999  # two models: related, not equal
    assert got[(-2, -2)] == pytest.approx(1.0)  # one corpus: the same log-mel frames in both runs


def test_the_sample_is_seeded_and_a_smaller_n_is_a_subset(wh):
    def keys(n, seed):
        t = query(wh, "compare_shared_keys", {"run": "A", "layer": 0, "other": "B", "other_layer": 2,
                                              "n": n, "seed": seed})
        return list(zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist()))

    assert keys(200, 0) == keys(200, 0)
    assert set(keys(100, 0)) < set(keys(200, 0))
    assert keys(200, 0) != keys(200, 1)
    assert keys(200, 0) == sorted(keys(200, 0))
    first = compare(("A", "B"), warehouse=str(wh), n=200, seed=0)["cka"]
    assert compare(("A", "B"), warehouse=str(wh), n=200, seed=0)["cka"].equals(first)


# ------------------------------------------------------------------------------------------- clusterings
def per_frame_clusters(root: Path, run: str, layer: int, k: int) -> dict[tuple[str, int], int]:
    out = {}
    for path in sorted((root / "clusters" / f"run={run}" / f"layer={layer}" / f"k={k}").glob("*.parquet")):
        t = pq.read_table(path)
        out.update(zip(zip(t["utterance_id"].to_pylist(), t["frame"].to_pylist()), t["cluster"].to_pylist()))
    return out


def test_a_clustering_agrees_with_itself(wh):
    result = compare(("A", "A"), warehouse=str(wh), n=100, k=3)
    rows = result["agreement"].to_pylist()
    assert {r["layer"] for r in rows} == set(LAYERS) and {r["k"] for r in rows} == {3}
    for r in rows:
        if r["metric"] in ("ami", "nmi", "ari", "homogeneity", "completeness", "v_measure"):
            assert r["value"] == pytest.approx(1.0, abs=1e-12), r


def test_agreement_equals_scikit_learn_on_the_joined_frames(wh):
    result = compare(("A", "B"), warehouse=str(wh), n=100)
    assert result["k"] == 4  # A has k = 3, 4; B has k = 4, 5
    got = {(r["layer"], r["metric"]): r for r in result["agreement"].to_pylist()}
    for layer in LAYERS:
        a, b = per_frame_clusters(wh, "A", layer, 4), per_frame_clusters(wh, "B", layer, 4)
        shared = sorted(a.keys() & b.keys())
        ca, cb = [a[key] for key in shared], [b[key] for key in shared]
        assert got[(layer, "ami")]["n"] == len(shared) > 900
        assert got[(layer, "ami")]["value"] == pytest.approx(adjusted_mutual_info_score(ca, cb), abs=1e-10)
        assert got[(layer, "nmi")]["value"] == pytest.approx(normalized_mutual_info_score(ca, cb), abs=1e-10)
        assert got[(layer, "ari")]["value"] == pytest.approx(adjusted_rand_score(ca, cb), abs=1e-10)


def test_k_is_the_largest_both_runs_analysed_or_an_error(wh):
    warehouse = Warehouse(wh)
    assert analysed(warehouse, "A") == {3: set(LAYERS), 4: set(LAYERS)}
    assert common_k(warehouse, "A", "B", None) == 4
    assert common_k(warehouse, "A", "noise", None) is None
    with pytest.raises(ValueError, match=r"k = 5 is not analysed for both runs \(A: k in \[3, 4\], B: k in \[4, 5\]\)"):
        compare(("A", "B"), warehouse=str(wh), k=5)
    result = compare(("A", "noise"), warehouse=str(wh), n=50)
    assert result["k"] is None and result["agreement"].num_rows == 0 and result["cka"].num_rows == len(LAYERS) ** 2


# ------------------------------------------------------------------------------------------- tables, errors
def test_tables_are_committed_replaced_on_rerun_and_pass_the_checks(wh):
    compare(("A", "B"), warehouse=str(wh), n=120, seed=1)
    compare(("A", "B"), warehouse=str(wh), n=150, seed=2)  # replaces the first
    con = Warehouse(wh).connect()
    rows = con.sql("select layer, other_layer, n from cka where run = 'A' and other = 'B'").fetchall()
    assert len(rows) == len(LAYERS) ** 2 and {r[2] for r in rows} == {150}
    agreement = con.sql("select distinct k, n from run_agreement where run = 'A' and other = 'B'").fetchall()
    assert len(agreement) == 1 and agreement[0][0] == 4
    cka_files = Warehouse(wh).committed_files("cka", "A")
    assert len([f for f in cka_files if "/other=B/" in f]) == 1
    assert all(pq.read_schema(wh / f).equals(CKA_SCHEMA) for f in cka_files)
    (record,) = Warehouse(wh).commit_records("A", "compare.B").values()
    assert record["params"] == {"run": "A", "other": "B", "n": 150, "seed": 2, "k": 4, "tiers": ["phone"]}
    assert all(v == 0 for v in run_checks(wh).values()), run_checks(wh)
    shown = query(wh, "compare_cka", {"run": "A", "other": "B"}).to_pylist()
    assert [(r["layer"], r["other_layer"]) for r in shown] == [(a, b) for a in LAYERS for b in LAYERS]


def test_runs_without_shared_utterances_are_refused(wh):
    copy_run(wh, "A", "renamed", lambda x, layer: x, rename=lambda uid: "other/" + uid)
    with pytest.raises(ValueError, match=r"share no utterance id"):
        compare(("A", "renamed"), warehouse=str(wh))


def test_other_frame_geometry_is_refused(wh):
    facts = Warehouse(wh).read_facts("A")
    geometry = {**facts["geometry"], "hop_samples": 160}
    copy_run(wh, "A", "hop160", lambda x, layer: x, facts_update={"geometry": geometry})
    with pytest.raises(ValueError, match=r"different frame geometry.*'hop_samples': 160"):
        compare(("A", "hop160"), warehouse=str(wh))


def test_the_same_ids_with_other_audio_are_refused(wh):
    copy_run(wh, "A", "longer", lambda x, layer: x, n_samples_delta=320)
    with pytest.raises(ValueError, match=r"other audio lengths, e\.g\. TRAIN/\S+ \(\d+ vs \d+ samples\)"):
        compare(("A", "longer"), warehouse=str(wh))


def test_bad_arguments(wh):
    with pytest.raises(ValueError, match=r"run 'nope' has no extracted frames"):
        compare(("A", "nope"), warehouse=str(wh))
    with pytest.raises(ValueError, match=r"two runs"):
        compare("A,B,noise", warehouse=str(wh))
    with pytest.raises(ValueError, match=r"at least 4"):
        compare("A,B", warehouse=str(wh), n=3)


# ------------------------------------------------------------------------------------------- paired differences
def test_paired_differences_match_each_runs_metrics_and_vanish_against_itself(wh):
    from pipeline.algorithms.bootstrap import CONTINGENCY_SCORES

    result = compare(("A", "B"), warehouse=str(wh), n=100, n_resamples=200)
    rows = result["differences"].to_pylist()
    assert {(r["layer"], r["metric"]) for r in rows} == {(layer, m) for layer in LAYERS for m in CONTINGENCY_SCORES}
    con = Warehouse(wh).connect()
    own = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "select run, layer, metric, value from metrics where k = 4 and tier = 'phone' and subset = 'all' "
        "and run in ('A', 'B')").fetchall()}
    for r in rows:
        assert (r["other_run"], r["other_layer"], r["k"], r["tier"]) == ("B", r["layer"], 4, "phone")
        # every frame is shared: the scores are each run's own metrics
        assert r["value"] == pytest.approx(own["A", r["layer"], r["metric"]], abs=1e-9)
        assert r["other_value"] == pytest.approx(own["B", r["layer"], r["metric"]], abs=1e-9)
        assert r["diff"] == pytest.approx(r["value"] - r["other_value"], abs=1e-12)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"] and r["n_resamples"] == 200  # 6 speakers
        assert r["significant"] == (r["ci_low"] > 0 or r["ci_high"] < 0)
    stored = con.execute("select count(*) from metric_differences where run = 'A' and other_run = 'B'").fetchall()[0][0]
    assert stored == len(rows)
    from pipeline.stages.compare import CompareResult

    text = CompareResult(result).summary()
    assert "A − B per layer (table metric_differences, 95 % paired bootstrap over speakers" in text
    same = compare(("A", "A"), warehouse=str(wh), n=100, k=3, n_resamples=100)["differences"].to_pylist()
    assert same and all(r["diff"] == 0 and r["ci_low"] == r["ci_high"] == 0 and r["significant"] is False
                        for r in same)
    off = compare(("A", "B"), warehouse=str(wh), n=100, intervals=False)
    assert off["differences"] is None
    con = Warehouse(wh).connect()
    assert con.execute("select count(*) from metric_differences where run = 'A' and other_run = 'B'").fetchall()[0][0] == 0
