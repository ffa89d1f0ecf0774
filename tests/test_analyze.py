"""analyze on the embedded corpus: real phonetic structure, bounded streaming, rerun safety."""

from __future__ import annotations

import pytest

from pipeline.stages.analyze import AnalyzeConfig, analyze
from pipeline.stages.extract import ExtractConfig, extract
from pipeline.warehouse import Warehouse
from pipeline.sql import run_checks


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    wh = tmp_path_factory.mktemp("wh")
    extract(ExtractConfig(run="emb", warehouse=str(wh), limit=48, layers="-1,2", shard_size=16, progress=False))
    return wh


@pytest.mark.slow
def test_spectral_frames_cluster_by_phone_far_above_shuffled(embedded_run):
    rows = analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=30, sample_per_label=200, n_iter=20,
                                 no_silence=True))
    by_layer = {r["layer"]: r for r in rows}
    assert set(by_layer) == {-1, 2}
    cnn = by_layer[-1]
    # measured 0.16 (k = 50, all 240 utterances); a shuffled labelling stays within ±0.01
    assert cnn["ami"] > 0.08
    assert abs(cnn["ami_shuffled_sample"]) < 0.02
    assert cnn["ami"] > 5 * abs(cnn["ami_shuffled_sample"])
    con = Warehouse(embedded_run).connect()
    # every frame of the layer was assigned exactly once, streamed file by file
    assert con.execute("select count(*) from clusters where layer = 2").fetchone() == con.execute(
        "select count(*) from frames where layer = 2").fetchone()
    metrics = con.execute("select distinct subset from metrics order by 1").fetchall()
    assert metrics == [("all",), ("no_silence",)]
    mapping = con.execute("select sum(cluster_size) from cluster_labels where layer = -1 and subset = 'all'").fetchone()[0]
    labelled = con.execute("select count(*) from frames where layer = -1 and phone is not null").fetchone()[0]
    assert mapping == labelled
    # a rerun replaces its files: no duplicated keys
    analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=30, sample_per_label=200, n_iter=20, layers="2"))
    con = Warehouse(embedded_run).connect()  # the rerun's commit removed the files the old views named
    dup = con.execute("select count(*) from (select utterance_id, frame, count(*) n from clusters where layer = 2 "
                  "group by all having n > 1)").fetchone()[0]
    assert dup == 0
    assert all(v == 0 for v in run_checks(embedded_run).values())


def test_analyze_explains_a_missing_run(tmp_path):
    with pytest.raises(ValueError, match=r"run 'nothing' has no extracted frames.*`python -m pipeline extract` first"):
        analyze(AnalyzeConfig(run="nothing", warehouse=str(tmp_path)))


@pytest.mark.slow
def test_segment_tier_gives_what_the_frames_column_gives(embedded_run):
    """The corpus's phone intervals copied to a segments tier of their own: analyze --tier phone_copy
    (labels by interval join on the frame centre) must give exactly the metrics of --tier phone
    (labels computed at extraction)."""
    import pyarrow as pa

    from pipeline.stages.analyze import _segment_labels

    wh = Warehouse(embedded_run)
    con = wh.connect()
    copy = con.sql("select utterance_id, 'phone_copy' as tier, idx, label, start_s, end_s, source "
                   "from segments where run = 'emb' and tier = 'phone'").to_arrow_table()
    from pipeline.warehouse.schemas import SEGMENTS

    record = wh.write("segments", copy.cast(SEGMENTS), "emb", 0, file_prefix="test_copy")
    wh.commit("emb", "test.phone_copy", 0, [record])
    con = wh.connect()
    from pipeline.algorithms.geometry import FrameGeometry

    frames = con.sql("select utterance_id, frame, phone from frames where run = 'emb' and layer = -1 "
                     "order by utterance_id, frame").to_arrow_table()
    labels = _segment_labels(con, wh.root, "emb", "phone_copy", frames["utterance_id"].combine_chunks(),
                             frames["frame"].combine_chunks(), FrameGeometry(**wh.read_facts("emb")["geometry"]))
    assert labels.to_pylist() == frames["phone"].to_pylist()
    kwargs = dict(run="emb", warehouse=str(embedded_run), k=20, sample_per_label=100, n_iter=10, layers="-1",
                  probe=False)
    by_column = analyze(AnalyzeConfig(tier="phone", **kwargs))[0]
    by_segments = analyze(AnalyzeConfig(tier="phone_copy", **kwargs))[0]
    assert by_segments == pytest.approx(by_column, abs=1e-12)
    with pytest.raises(ValueError, match=r"run\(s\) \['emb'\] have no tier 'nope'"):
        analyze(AnalyzeConfig(tier="nope", **kwargs))
    assert isinstance(labels, pa.Array)


@pytest.mark.slow
def test_by_attribute_scores_every_group_and_the_probe_beats_chance(embedded_run):
    rows = analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=20, sample_per_label=100, n_iter=10,
                                 layers="-1", by="gender"))
    layer = rows[0]
    assert layer["probe_balanced_accuracy"] > 2 * layer["probe_chance"]
    con = Warehouse(embedded_run).connect()
    groups = dict(con.execute("select group_value, max(n) from group_metrics where attribute = 'gender' "
                              "and metric = 'ami' group by 1").fetchall())
    per_gender = dict(con.execute("select metadata['gender'], count(*) from frames f join utterances u "
                                  "using (run, utterance_id) where f.layer = -1 and f.phone is not null "
                                  "group by 1").fetchall())
    assert groups == per_gender  # every labelled frame scored once, in its own group
    metrics = {m for (m,) in con.execute("select distinct metric from group_metrics").fetchall()}
    assert {"ami", "ami_within", "ami_transfer", "probe_balanced_accuracy_transfer"} <= metrics
    with pytest.raises(ValueError, match="has attribute 'nope'"):
        analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=20, layers="-1", by="nope"))


# ------------------------------------------------------------------------------------------- issue 14
def _contingency(counts, speakers, labels, k):
    """An analyze._Contingency filled from (speakers × labels × clusters) counts, as the streaming pass fills it."""
    import numpy as np
    import pyarrow as pa

    from pipeline.stages.analyze import _Contingency

    t = _Contingency(k)
    s, lab, c = np.nonzero(counts)
    reps = counts[s, lab, c]
    t.add(pa.array(np.repeat(np.asarray(labels, dtype=object)[lab], reps).tolist()),
          pa.array(np.repeat(np.asarray(speakers, dtype=object)[s], reps).tolist()), np.repeat(c, reps))
    return t


def test_contingency_scores_average_restarts_and_bootstrap_their_mean():
    import numpy as np

    from pipeline.algorithms import bootstrap as B
    from pipeline.algorithms import metrics as M
    from pipeline.stages.analyze import _contingency_scores

    rng = np.random.default_rng(0)
    speakers, labels = [f"s{i}" for i in range(10)], [f"p{i}" for i in range(6)]
    restarts = [rng.multinomial(200, rng.dirichlet(np.full(6 * 8, 0.5)), size=10).reshape(10, 6, 8) for _ in range(3)]
    tables = [_contingency(c, speakers, labels, 8) for c in restarts]
    cfg = AnalyzeConfig(run="x", n_resamples=300, seeds=3)
    rows, scored, spk = _contingency_scores(tables, np.ones(6, bool), cfg)
    by = {r["metric"]: r for r in rows}
    per_seed = [M.contingency_metrics(c.sum(axis=0))["ami"] for c in restarts]
    assert by["ami"]["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert by["ami"]["seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12) and by["ami"]["n_seeds"] == 3
    assert by["ami"]["ci_low"] < by["ami"]["value"] < by["ami"]["ci_high"]
    assert by["ami"]["ci_method"] in ("bca", "basic") and by["ami"]["n_resamples"] == 300
    assert by["n_clusters"]["ci_low"] is None and by["n_clusters"]["null_reason"] == "a count: no interval"
    assert sorted(spk.tolist()) == speakers and set(scored) == set(B.CONTINGENCY_SCORES)
    # one restart: the same as bootstrap_contingency on the per-speaker tables
    rows1, _, _ = _contingency_scores(tables[:1], np.ones(6, bool), AnalyzeConfig(run="x", n_resamples=300))
    ref = B.bootstrap_contingency(B.SpeakerTables.from_dense(restarts[0], speakers), 300, 0)
    got = {r["metric"]: r for r in rows1}
    assert (got["ami"]["ci_low"], got["ami"]["ci_high"]) == (ref["ami"].ci_low, ref["ami"].ci_high)
    assert got["ami"]["seed_sd"] is None and got["ami"]["n_seeds"] == 1


def test_one_speaker_few_speakers_and_one_label_give_nulls_with_reasons():
    import numpy as np

    from pipeline.stages.analyze import _contingency_scores

    rng = np.random.default_rng(1)
    cfg = AnalyzeConfig(run="x", n_resamples=100)
    one = _contingency(rng.integers(0, 9, (1, 4, 5)), ["s0"], list("abcd"), 5)
    by = {r["metric"]: r for r in _contingency_scores([one], np.ones(4, bool), cfg)[0]}
    assert by["ami"]["value"] is not None and by["ami"]["ci_low"] is None and "one speaker" in by["ami"]["null_reason"]
    few = _contingency(rng.integers(0, 9, (3, 4, 5)), ["s0", "s1", "s2"], list("abcd"), 5)
    by = {r["metric"]: r for r in _contingency_scores([few], np.ones(4, bool), cfg)[0]}
    assert by["nmi"]["ci_low"] is None and by["nmi"]["null_reason"].startswith("3 speakers: too few")
    single = _contingency(rng.integers(1, 9, (6, 1, 5)), [f"s{i}" for i in range(6)], ["a"], 5)
    by = {r["metric"]: r for r in _contingency_scores([single], np.ones(1, bool), cfg)[0]}
    assert by["ami"]["value"] is None and "label" in by["ami"]["null_reason"]


@pytest.fixture(scope="module")
def many_speakers(tmp_path_factory):
    """20 speakers × 2 utterances (tones, 6 phones, two words each: 'she', 'sea'; plus make_timit's 2
    speakers) through a tiny random wav2vec2 (layers -1, 0, 1, 2): enough speakers for a speaker
    bootstrap of the probe's and CCA's held-out quarter (6 speakers), in seconds. `--layers all,mel`:
    the log-mel layer -2 too."""
    import numpy as np

    from pipeline.testing import make_timit, save_tiny, tone, write_timit_utt
    from pipeline.testing.corpora import phone_lines

    tmp = tmp_path_factory.mktemp("speakers")
    corpus = make_timit(tmp / "corpus")
    rng = np.random.default_rng(3)
    for i in range(40):
        n = int(rng.integers(12_000, 20_000))
        uid = f"TRAIN/DR3/SPK{i % 20:02d}/SX{i:03d}"
        phones = ["h#", *rng.permutation(["sh", "iy", "s", "aa", "n", "t"]), "h#"]
        write_timit_utt(corpus, uid, n, phones=phones, fmt="WAV", wave=tone(n, freq_hz=100 + 29 * i, seed=i))
        bounds = list(np.linspace(0, n, len(phones) + 1).astype(int))
        (corpus / uid).with_suffix(".WRD").write_text(phone_lines([bounds[1], bounds[4], bounds[7]], ["she", "sea"]))
    model = save_tiny(tmp / "model", "wav2vec2-group")
    wh = tmp / "wh"
    extract(ExtractConfig(run="spk", model=str(model), format="timit", corpus=str(corpus), warehouse=str(wh),
                          layers="all,mel", shard_size=8, device="cpu", progress=False))
    return wh


@pytest.mark.slow
def test_intervals_cca_and_adjacent_layer_differences(many_speakers, caplog):
    from pipeline.algorithms.bootstrap import CONTINGENCY_SCORES
    from pipeline.stages.analyze import AnalyzeResult

    kw = dict(run="spk", warehouse=str(many_speakers), k=6, sample_per_label=40, n_iter=10)
    rows = analyze(AnalyzeConfig(**kw, n_resamples=200, min_word_tokens=5))
    layers = [r["layer"] for r in rows]
    assert layers == [-2, -1, 0, 1, 2]
    con = Warehouse(many_speakers).connect()
    m = {(r["layer"], r["metric"]): r for r in con.sql(
        "select * from metrics where run = 'spk' and k = 6 and subset = 'all'").to_arrow_table().to_pylist()}
    for layer in layers:
        ami = m[layer, "ami"]
        assert ami["ci_low"] <= ami["value"] <= ami["ci_high"] and ami["ci_method"] in ("bca", "basic")
        assert ami["n_resamples"] == 200 and ami["n_seeds"] == 1 and ami["seed_sd"] is None
        assert ami["null_reason"] is None
        assert m[layer, "silhouette"]["ci_low"] is None
        assert m[layer, "silhouette"]["null_reason"] == "sample-based metric: no interval"
        probe = m[layer, "probe_accuracy"]  # 6 held-out speakers
        assert probe["ci_low"] <= probe["value"] <= probe["ci_high"] and probe["null_reason"] is None
        assert probe["ci_method"] in ("speaker-grouped bca", "speaker-grouped basic")
    cca = {(r["layer"], r["metric"]): r for r in con.sql(
        "select * from metrics where run = 'spk' and k = 0").to_arrow_table().to_pylist()}
    assert set(cca) == {(layer, name) for layer in layers for name in ("cca_phone", "cca_word", "cca_mel")}
    assert cca[-2, "cca_mel"]["value"] == pytest.approx(1.0, abs=1e-6)  # the log-mel layer against itself
    for c in cca.values():  # PWCCA of held-out speakers is signed: an overfit direction counts against it
        assert -1 <= c["value"] <= 1 and c["ci_low"] <= c["value"] <= c["ci_high"] and c["n_resamples"] == 200
    diffs = con.sql("select * from metric_differences where run = 'spk'").to_arrow_table().to_pylist()
    pairs = {(r["layer"], r["other_layer"]) for r in diffs}
    assert pairs == {(-2, -1), (-1, 0), (0, 1), (1, 2)}
    for d in diffs:
        if d["k"] == 6:
            assert d["value"] == m[d["layer"], d["metric"]]["value"]
            assert d["other_value"] == m[d["other_layer"], d["metric"]]["value"]
        assert d["other_run"] == "spk" and d["tier"] == "phone"
        assert d["diff"] == pytest.approx(d["value"] - d["other_value"], abs=1e-12)
        if d["ci_low"] is not None:
            assert d["significant"] == (d["ci_low"] > 0 or d["ci_high"] < 0) and d["n_resamples"] == 200
    probe = {"probe_accuracy", "probe_balanced_accuracy"}  # the balanced sample: the same frames in every layer
    assert {r["metric"] for r in diffs if r["k"] == 6} == set(CONTINGENCY_SCORES) | probe
    assert {r["metric"] for r in diffs if r["k"] == 0} == {"cca_phone", "cca_word", "cca_mel"}
    text = AnalyzeResult(rows).summary()
    assert f"{rows[0]['ami']:.3f} [{m[-1, 'ami']['ci_low']:.3f}, {m[-1, 'ami']['ci_high']:.3f}]" in text
    # words too rare for cca_word: a null with its reason, in the log and the table; a rerun supersedes
    with caplog.at_level("WARNING"):
        analyze(AnalyzeConfig(**kw, n_resamples=50, layers="1,2", probe=False, min_word_tokens=1000))
    assert "cca_word is null: 0 word(s) have 1000 or more tokens" in caplog.text
    con = Warehouse(many_speakers).connect()
    word = con.execute("select value, null_reason from metrics where run = 'spk' and k = 0 and layer = 2 "
                   "and metric = 'cca_word'").fetchall()
    assert len(word) == 1 and word[0][0] is None and "1000 or more tokens" in word[0][1]
    assert con.execute("select count(*) from (select layer, k, metric, count(*) n from metrics where run = 'spk' "
                   "and subset = 'all' group by all having n > 1)").fetchall()[0][0] == 0
    got = con.execute("select count(*), count(distinct (layer, other_layer, k, metric)) from metric_differences "
                  "where run = 'spk'").fetchall()[0]
    # (-2, -1) and (-1, 0) from the first run; the rerun's (1, 2) without the probe (--no-probe) and cca_word
    # (null in both layers)
    assert got[0] == got[1] and got[0] == 2 * (len(CONTINGENCY_SCORES) + 2 + 3) + (len(CONTINGENCY_SCORES) + 2)
    assert all(v == 0 for v in run_checks(many_speakers).values())


def test_bad_seeds_and_resamples_are_errors_that_say_what_to_do():
    with pytest.raises(ValueError, match="--seeds 0: the number of k-means restarts must be 1 or more"):
        AnalyzeConfig(run="x", seeds=0)
    with pytest.raises(ValueError, match="--n-resamples 1: .*or pass --no-intervals"):
        AnalyzeConfig(run="x", n_resamples=1)
    AnalyzeConfig(run="x", n_resamples=1, intervals=False)  # unused without intervals


def test_layers_name_the_log_mel_layer():
    from pipeline.stages.extract import split_layers

    assert split_layers("all", 2) == ([-1, 0, 1, 2], True) and split_layers("all,mel", 2)[1]
    assert split_layers("-1,mel", 2) == ([-1], True) and split_layers("2,-2", 2) == ([2], True)
    assert split_layers("-1,0-2", 2) == ([-1, 0, 1, 2], False)
    with pytest.raises(ValueError, match="names no layer of the model.*--layers -1,mel"):
        split_layers("mel", 2)


@pytest.mark.slow
def test_the_log_mel_layer_is_the_log_mel_of_each_frames_samples(many_speakers):
    import numpy as np
    import soundfile as sf

    from pipeline.algorithms.logmel import log_mel_frames

    con = Warehouse(many_speakers).connect()
    uid = con.execute("select utterance_id from utterances where run = 'spk' order by 1 limit 1").fetchall()[0][0]
    stored = con.sql(f"select frame, vector from frames where run = 'spk' and layer = -2 and utterance_id = '{uid}' "
                     "order by frame").to_arrow_table()
    n_cnn = con.execute(f"select count(*) from frames where run = 'spk' and layer = -1 and utterance_id = '{uid}'").fetchall()[0][0]
    wave, _ = sf.read(many_speakers.parent / "corpus" / f"{uid}.WAV", dtype="float32")  # ids are TIMIT paths
    expected = log_mel_frames(wave, 400, 320)
    got = np.asarray(stored["vector"].to_pylist(), np.float32)
    assert stored.num_rows == n_cnn == len(expected) and got.shape[1] == 80
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-2)  # stored as float16
