"""Model loading and exact batched / chunked layer extraction on tiny random-weight checkpoints.

Tolerances (float32, CPU, measured with transformers 5.24 / torch 2.13):
- batched `extract` against one model call per waveform: max |diff| / max |ref| <= 1.5e-6 on
  every layer of every family; asserted <= 1e-5.
- a naive padded waveform batch with attention mask: ~1 on group-norm models and on
  data2vec-audio (positional conv stack), ~1e-7 on layer-norm wav2vec2; asserted > 0.1 / < 1e-5.
- chunking 12 s into 3 s windows with 1 s context: layers -1 and 0 <= 1e-6 (exact: whole-utterance
  normalisation and GroupNorm statistics; context >= positional conv reach); transformer layers
  3e-4 .. 6e-3 (group norm) / 3e-4 .. 1.4e-3 (layer norm), spread over all frames because random
  attention is near uniform; asserted <= 2e-2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import model as M
from pipeline.algorithms.geometry import FrameGeometry
from pipeline.model import batching, forward
from pipeline.testing import TINY_FAMILIES as FAMILIES, save_tiny

RATE = 16_000
BATCH_TOL = 1e-5
CHUNK_TOL = 2e-2
EXACT_LAYERS_CHUNK_TOL = 1e-5
LENGTHS = [400, 401, 719, 720, 3200, 5000, 5000, 16_000, 12_345]


GROUP_NORM = [f for f in FAMILIES if f.endswith("-group")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(family) -> LoadedModel, built and loaded once per module."""
    cache: dict[str, M.LoadedModel] = {}

    def get(family: str) -> M.LoadedModel:
        if family not in cache:
            folder = save_tiny(tmp_path_factory.mktemp(family), family)
            cache[family] = M.load_model(str(folder), device="cpu")
        return cache[family]

    return get


def waves_of(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * rng.uniform(0.01, 1.0)).astype(np.float32) for n in lengths]


def speechlike(seconds: float, seed: int = 1) -> np.ndarray:
    """A tone whose loudness jumps 4x halfway, plus noise: window statistics differ from the whole."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    loud = 1 + 3 * (t > seconds / 2)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * loud + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@torch.inference_mode()
def one_at_a_time(lm: M.LoadedModel, wave: np.ndarray, prefix_model=None) -> dict[int, np.ndarray]:
    """Reference: the model's own forward on one waveform, no padding, no mask."""
    model = prefix_model if prefix_model is not None else lm.model
    x = torch.from_numpy(M.normalize_waveform(wave) if lm.do_normalize else wave)[None]
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == lm.num_layers + 1
    ref = {-1: model.feature_extractor(x)[0].T.numpy()}
    ref.update({i: h[0].numpy() for i, h in enumerate(out.hidden_states)})
    return ref


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_facts(tiny, family):
    lm = tiny(family)
    assert lm.geometry == FrameGeometry(400, 320, RATE)
    assert (lm.num_layers, lm.hidden_size, lm.conv_dim) == (2, 32, 16)
    assert lm.valid_layers == [-1, 0, 1, 2]
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    assert type(lm.model).__name__ in ("Wav2Vec2Model", "HubertModel", "WavLMModel", "Data2VecAudioModel")
    # no preprocessor_config.json: fairseq convention, normalise for layer-norm conv stacks only
    assert lm.do_normalize_source == "convention"
    assert lm.do_normalize == (not family.endswith("-group"))
    assert lm.revision.startswith("sha256:") and len(lm.config_fingerprint) == 64
    assert lm.facts()["hop_samples"] == 320


def test_fingerprints_are_stable_and_sensitive(tmp_path, tiny):
    a = M.load_model(str(save_tiny(tmp_path / "a", "wav2vec2-group")), device="cpu")
    b = tiny("wav2vec2-group")
    assert a.config_fingerprint == b.config_fingerprint and a.revision == b.revision  # same seed, same bytes
    assert tiny("wav2vec2-layer").config_fingerprint != b.config_fingerprint


def test_do_normalize_comes_from_preprocessor_config(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    folder = save_tiny(tmp_path / "m", "wav2vec2-group")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    lm = M.load_model(str(folder), device="cpu")
    assert (lm.do_normalize, lm.do_normalize_source) == (True, "preprocessor_config")


def test_spec_augment_masking_is_off_in_eval(tiny):
    lm = tiny("wav2vec2-group")
    assert lm.config.mask_time_prob == 0.5 and not lm.model.training
    h = torch.randn(2, 30, lm.hidden_size)
    assert torch.equal(lm.model._mask_hidden_states(h.clone()), h)
    x = torch.from_numpy(waves_of([8000])[0])[None]
    with torch.inference_mode():
        assert torch.equal(lm.model(x).last_hidden_state, lm.model(x).last_hidden_state)


@pytest.mark.parametrize("family,head", [
    ("wav2vec2-group", "Wav2Vec2ForCTC"), ("wav2vec2-layer", "Wav2Vec2ForPreTraining"),
    ("hubert-group", "HubertForCTC"), ("wavlm-group", "WavLMForCTC"), ("data2vec-audio", "Data2VecAudioForCTC"),
])
def test_head_checkpoints_give_their_base_encoder(tmp_path, family, head):
    import transformers

    folder = save_tiny(tmp_path / "ckpt", family, head)
    full = getattr(transformers, head).from_pretrained(folder).eval()
    base = getattr(full, full.base_model_prefix)
    lm = M.load_model(str(folder), device="cpu")
    assert type(lm.model) is type(base)
    waves = waves_of([4000, 6400])
    for wave, got in zip(waves, M.extract(lm, waves, "all")):
        ref = one_at_a_time(lm, wave, prefix_model=base)
        for layer in lm.valid_layers:
            assert rel_err(got[layer], ref[layer]) <= BATCH_TOL, (head, layer)


def test_load_model_rejects_bad_arguments(tiny, tmp_path):
    folder = save_tiny(tmp_path / "m", "wav2vec2-group")
    with pytest.raises(ValueError, match="dtype"):
        M.load_model(str(folder), device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            M.load_model(str(folder), device="cuda")


# ---------------------------------------------------------------- layers


def test_parse_layers():
    assert M.parse_layers("all", 12) == list(range(-1, 13))
    assert M.parse_layers("-1,0,12", 12) == [-1, 0, 12]
    assert M.parse_layers("8-12", 12) == [8, 9, 10, 11, 12]
    assert M.parse_layers("-1-2, 12", 12) == [-1, 0, 1, 2, 12]
    assert M.parse_layers([3, "1", 3], 12) == [1, 3]
    assert M.parse_layers(0, 4) == [0]
    for bad in ("13", "-2", "3-13", "x", "", "5-3"):
        with pytest.raises(ValueError, match=r"-1\.\.12|empty|no layers"):
            M.parse_layers(bad, 12)


# ---------------------------------------------------------------- exact batching


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_extract_equals_one_at_a_time(tiny, family):
    lm = tiny(family)
    waves = waves_of(LENGTHS)
    got = M.extract(lm, waves, "all", max_batch_samples=40_000)  # several batches of mixed lengths
    for wave, out in zip(waves, got):
        ref = one_at_a_time(lm, wave)
        assert set(out) == {-1, 0, 1, 2}
        for layer, r in ref.items():
            assert out[layer].shape == (lm.geometry.n_frames(len(wave)), lm.layer_dim(layer)) == r.shape
            assert out[layer].dtype == np.float32
            assert rel_err(_as_hidden_state(lm, layer, out[layer]), r) <= BATCH_TOL, (family, len(wave), layer)


def _as_hidden_state(lm: M.LoadedModel, layer: int, got: np.ndarray) -> np.ndarray:
    """transformers < 5 reported the last layer of do_stable_layer_norm models after the encoder's
    final LayerNorm; 5.x (and extract, in every version) report the layer's own output."""
    import transformers

    stable = getattr(lm.config, "do_stable_layer_norm", False)
    if layer == lm.num_layers and stable and int(transformers.__version__.split(".")[0]) < 5:
        with torch.inference_mode():
            return lm.model.encoder.layer_norm(torch.from_numpy(got)).numpy()
    return got


@pytest.mark.parametrize("family", GROUP_NORM + ["data2vec-audio"])
def test_naive_padded_waveform_batch_is_not_exact(tiny, family):
    """Why extract() exists: GroupNorm over time (and data2vec's positional conv stack) see the padding."""
    lm = tiny(family)
    errors = _naive_padded_errors(lm, waves_of(LENGTHS))
    assert max(errors) > 0.1, errors


def test_naive_padded_waveform_batch_is_exact_for_layer_norm_wav2vec2(tiny):
    lm = tiny("wav2vec2-layer")
    assert max(_naive_padded_errors(lm, waves_of(LENGTHS))) <= BATCH_TOL


@torch.inference_mode()
def _naive_padded_errors(lm: M.LoadedModel, waves: list[np.ndarray]) -> list[float]:
    xs = [M.normalize_waveform(w) if lm.do_normalize else w for w in waves]
    padded = np.zeros((len(xs), max(map(len, xs))), np.float32)
    mask = np.zeros(padded.shape, np.int64)
    for i, x in enumerate(xs):
        padded[i, :len(x)], mask[i, :len(x)] = x, 1
    out = lm.model(torch.from_numpy(padded), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    errors = []
    for i, wave in enumerate(waves):
        ref, n = one_at_a_time(lm, wave), lm.geometry.n_frames(len(wave))
        errors += [rel_err(h[i, :n].numpy(), ref[layer]) for layer, h in enumerate(out.hidden_states)]
    return errors


def test_too_short_and_bad_waveforms(tiny):
    lm = tiny("wav2vec2-group")
    out = M.extract(lm, waves_of([400]), [-1, 2])
    assert out[0][-1].shape == (1, 16) and out[0][2].shape == (1, 32)
    with pytest.raises(ValueError, match="waveform 1: 399 samples"):
        M.extract(lm, waves_of([400, 399]), "all")
    with pytest.raises(ValueError, match="1-D mono"):
        M.extract(lm, [np.zeros((800, 2), np.float32)], "all")
    nan = waves_of([800])[0]
    nan[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.extract(lm, [nan], "all")


def test_layer_subset_equals_full_run(tiny):
    lm = tiny("wavlm-group")
    waves = waves_of([3000, 7000])
    full = M.extract(lm, waves, "all")
    for layers in ([-1], [0], [1], [-1, 2]):
        part = M.extract(lm, waves, layers)
        for f, p in zip(full, part):
            assert sorted(p) == layers
            for layer in layers:
                np.testing.assert_array_equal(p[layer], f[layer])


def test_last_layer_of_stable_layer_norm_models_is_before_final_norm(tiny):
    """Layer N is the last transformer layer's own output, before the final LayerNorm of
    do_stable_layer_norm encoders (as hidden_states[N] in transformers 5.x; 4.x reported it
    after); last_hidden_state is after."""
    lm = tiny("wav2vec2-layer")
    wave = waves_of([6400])[0]
    got = M.extract(lm, [wave], [lm.num_layers])[0][lm.num_layers]
    x = torch.from_numpy(M.normalize_waveform(wave))[None]
    with torch.inference_mode():
        last = lm.model(x).last_hidden_state[0]
        assert rel_err(lm.model.encoder.layer_norm(torch.from_numpy(got)).numpy(), last.numpy()) <= BATCH_TOL
    assert rel_err(got, last.numpy()) > 0.1


def test_normalize_waveform_matches_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    wave = waves_of([12_345])[0] * 3 + 0.5
    ref = Wav2Vec2FeatureExtractor(do_normalize=True)(wave, sampling_rate=RATE).input_values[0]
    np.testing.assert_allclose(M.normalize_waveform(wave), ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_autocast_on_cpu(tiny):
    lm = tiny("wav2vec2-group")
    bf16 = dataclasses.replace(lm, dtype="bfloat16")
    waves = waves_of([4000, 9000])
    for a, b in zip(M.extract(bf16, waves, "all"), M.extract(lm, waves, "all")):
        for layer in b:
            assert a[layer].dtype == np.float32 and a[layer].shape == b[layer].shape
            assert rel_err(a[layer], b[layer]) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_matches_cpu(tmp_path, dtype):
    folder = str(save_tiny(tmp_path / "m", "wav2vec2-group"))
    cpu, gpu = M.load_model(folder, device="cpu"), M.load_model(folder, device="cuda", dtype=dtype)
    waves = waves_of(LENGTHS)
    tol = 1e-4 if dtype == "float32" else 5e-2
    for a, b in zip(M.extract(gpu, waves, "all"), M.extract(cpu, waves, "all")):
        for layer in b:
            assert rel_err(a[layer], b[layer]) < tol, (dtype, layer)


# ---------------------------------------------------------------- batching and chunking helpers


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 20_000), st.integers(1, 16))
def test_length_buckets(lengths, max_samples, max_size):
    batches = M.length_buckets(lengths, max_samples, max_size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    order = [i for b in batches for i in b]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # neighbours in length order
    for b in batches:
        assert len(b) <= max_size
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_samples


@settings(max_examples=300, deadline=None)
@given(st.integers(400, 3_000_000), st.sampled_from([None, 0.5, 3.0, 30.0]), st.sampled_from([0.0, 0.3, 1.0, 2.0]))
def test_chunk_windows_tile_the_frames(n_samples, max_chunk_s, context_s):
    geo = FrameGeometry(400, 320, RATE)
    windows = M.chunk_windows(n_samples, geo, max_chunk_s, context_s)
    kept = []
    for w in windows:
        assert w.start_sample % geo.hop_samples == 0 and w.start_sample // geo.hop_samples == w.first_frame
        assert w.start_sample + w.n_samples <= n_samples
        assert 0 <= w.keep_start < w.keep_stop <= geo.n_frames(w.n_samples)
        kept += range(w.first_frame + w.keep_start, w.first_frame + w.keep_stop)
        if max_chunk_s:
            assert w.keep_stop - w.keep_start <= max_chunk_s * RATE / geo.hop_samples
    assert kept == list(range(geo.n_frames(n_samples)))
    assert len(windows) == 1 or n_samples > max_chunk_s * RATE


@pytest.mark.parametrize("family", ["wav2vec2-group", "wav2vec2-layer", "data2vec-audio"])
def test_chunked_extract_has_exact_rows_and_bounded_error(tiny, family):
    lm = tiny(family)
    wave = speechlike(12.0)
    whole = M.extract(lm, [wave], "all", max_chunk_s=None)[0]
    chunked = M.extract(lm, [wave], "all", max_chunk_s=3.0, context_s=1.0)[0]
    assert len(M.chunk_windows(len(wave), lm.geometry, 3.0, 1.0)) == 4
    for layer, ref in whole.items():
        assert chunked[layer].shape == ref.shape == (lm.geometry.n_frames(len(wave)), lm.layer_dim(layer))
        err = rel_err(chunked[layer], ref)
        # -1: conv is local, normalisation and GroupNorm use whole-utterance statistics;
        # 0: plus the positional conv, whose reach (8 frames here) is inside the 50-frame context
        bound = EXACT_LAYERS_CHUNK_TOL if layer <= 0 else CHUNK_TOL
        assert err <= bound, (family, layer, err)


def test_whole_utterance_group_norm_statistics_merge_pieces_exactly(tiny, monkeypatch):
    lm = tiny("wav2vec2-group")
    wave = speechlike(5.3)
    first = lm.model.feature_extractor.conv_layers[0]
    with torch.inference_mode():
        ref_var, ref_mean = torch.var_mean(first.conv(torch.from_numpy(wave)[None, None])[0], dim=-1, correction=0)
    monkeypatch.setattr(forward, "STATS_PIECE_SAMPLES", 7_777)  # 11 uneven pieces
    mean, var = forward._conv0_stats(lm, wave)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-6)
    whole = M.extract(lm, [wave], [-1], max_chunk_s=None)[0][-1]
    chunked = M.extract(lm, [wave], [-1], max_chunk_s=1.0, context_s=0.5)[0][-1]
    assert rel_err(chunked, whole) <= EXACT_LAYERS_CHUNK_TOL


def test_chunked_extract_in_a_mixed_batch(tiny):
    """Windows of a long waveform batch with short waveforms; the short ones stay exact."""
    lm = tiny("hubert-group")
    waves = [speechlike(7.0)] + waves_of([5000, 16_000])
    alone = [M.extract(lm, [w], "all", max_chunk_s=None)[0] for w in waves]
    mixed = M.extract(lm, waves, "all", max_chunk_s=2.0, context_s=1.0)
    for i, (a, m) in enumerate(zip(alone, mixed)):
        for layer in a:
            assert m[layer].shape == a[layer].shape
            bound = BATCH_TOL if i > 0 or layer <= 0 else CHUNK_TOL
            assert rel_err(m[layer], a[layer]) <= bound, (i, layer)


# ---------------------------------------------------------------- long recordings, streamed


@pytest.mark.parametrize("family", ["wav2vec2-group", "wav2vec2-layer"])
def test_extract_windows_streams_exactly_what_extract_returns(tiny, family):
    """Default windows (30 s + 2 s context): 70 s run in 3; the blocks tile the frames in order and
    equal extract's rows bit for bit, alone or in a call with short waveforms."""
    lm = tiny(family)
    wave = speechlike(70.0)
    n_frames = lm.geometry.n_frames(len(wave))
    assert M.n_windows(lm, len(wave)) == 3 and M.n_windows(lm, 30 * RATE) == 1 and M.n_windows(lm, 31 * RATE) == 2
    whole = M.extract(lm, [wave], "all")[0]
    mixed = M.extract(lm, waves_of([5000, 16_000]) + [wave], "all")[2]
    blocks = list(M.extract_windows(lm, wave, "all"))
    assert len(blocks) == 3
    first_frames = [first for first, _ in blocks]
    assert first_frames[0] == 0
    for (first, block), (nxt, _) in zip(blocks, blocks[1:] + [(n_frames, None)]):
        assert sorted(block) == lm.valid_layers
        for layer, rows in block.items():
            assert rows.dtype == np.float32 and rows.shape == (nxt - first, lm.layer_dim(layer))
            assert np.array_equal(rows, whole[layer][first:nxt]) and np.array_equal(rows, mixed[layer][first:nxt])
    part = list(M.extract_windows(lm, wave, [-1, 2]))
    assert [f for f, _ in part] == first_frames
    assert all(np.array_equal(b[2], whole[2][f:f + len(b[2])]) and sorted(b) == [-1, 2] for f, b in part)


def test_extract_windows_fits_one_window_and_checks_the_wave_at_once(tiny):
    lm = tiny("hubert-group")
    wave = waves_of([16_000])[0]
    (first, block), = M.extract_windows(lm, wave, [0])
    assert first == 0 and np.array_equal(block[0], M.extract(lm, [wave], [0])[0][0])
    with pytest.raises(ValueError, match="399 samples"):
        M.extract_windows(lm, waves_of([399])[0], "all")  # now, not when the first block is taken
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        M.extract_windows(lm, wave, [7])


def test_extract_windows_memory_is_one_window_not_a_copy_of_the_recording(tiny, monkeypatch):
    """10 minutes: the model runs one window per block taken (nothing computed ahead, no outputs kept),
    and numpy's peak beyond the input is a few MB of pieces and one window: each window is normalised
    when it runs, with no full-length normalised copy (the old float64 normalisation took 5 copies' worth)."""
    import tracemalloc

    lm = tiny("wav2vec2-layer")
    assert lm.do_normalize
    wave = (np.random.default_rng(0).standard_normal(600 * RATE) * 0.1).astype(np.float32)
    calls = []
    forward_batch = forward._forward_batch
    monkeypatch.setattr(forward, "_forward_batch", lambda *a, **k: calls.append(1) or forward_batch(*a, **k))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        blocks = M.extract_windows(lm, wave, "all")
        n_frames = 0
        for i, (first, block) in enumerate(blocks):
            assert len(calls) == i + 1 and first == n_frames
            n_frames += len(block[0])
            del block
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert n_frames == lm.geometry.n_frames(len(wave)) and len(calls) == M.n_windows(lm, len(wave)) == 20
    assert peak <= 16e6 < wave.nbytes, peak / 1e6


def test_normalize_waveform_in_pieces(monkeypatch):
    """One piece: numpy's whole-array mean and var bit for bit; many pieces: float64 rounding only."""
    wave = waves_of([12_345])[0] * 3 + 0.5
    w = wave.astype(np.float64)
    ref = ((w - w.mean()) / np.sqrt(w.var() + M.NORM_EPS)).astype(np.float32)
    assert np.array_equal(M.normalize_waveform(wave), ref)
    monkeypatch.setattr(batching, "STATS_PIECE_SAMPLES", 1_000)  # 13 uneven pieces
    np.testing.assert_allclose(M.normalize_waveform(wave), ref, rtol=1e-6, atol=1e-6)
    assert M.normalize_waveform(np.zeros(0, np.float32)).shape == (0,)


# ---------------------------------------------------------------- default model


def test_default_model_builds_deterministically_and_loads(tmp_path):
    a = M.ensure_default_model(tmp_path / "a")
    b = M.ensure_default_model(tmp_path / "b")
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert M.ensure_default_model(a) == a  # present: not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    lm = M.load_model(str(a), device="cpu")
    assert lm.geometry == FrameGeometry(400, 320, RATE)
    assert (lm.num_layers, lm.hidden_size, lm.conv_dim, lm.config.feat_extract_norm) == (4, 256, 256, "group")
    assert (lm.do_normalize, lm.do_normalize_source) == (True, "preprocessor_config")
    out = M.extract(lm, waves_of([16_000]), "all")[0]
    assert out[4].shape == (49, 256) and np.isfinite(out[4]).all()


def test_default_model_by_name(tmp_path):
    lm = M.load_model("default", device="cpu", cache_dir=tmp_path)
    assert lm.model_id == "default"
    assert M.default_model_path(tmp_path).exists() and lm.revision.startswith("sha256:")


def test_folder_fingerprint_cache_follows_the_files(tmp_path, monkeypatch):
    """The cached digest is reused only while every file's size, mtime and inode are unchanged."""
    import os

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = M.folder_fingerprint(folder)
    assert first == M.folder_fingerprint(folder, cache=False)
    assert list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    assert M.folder_fingerprint(folder) == first  # from the cache
    st = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size: other bytes
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = M.folder_fingerprint(folder)
    assert second != first and second == M.folder_fingerprint(folder, cache=False)
    (tmp_path / "cache" / "fingerprints").chmod(0o500)  # an unwritable cache is skipped, not an error
    try:
        (folder / "extra.bin").write_bytes(b"x")
        assert M.folder_fingerprint(folder) == M.folder_fingerprint(folder, cache=False)
    finally:
        (tmp_path / "cache" / "fingerprints").chmod(0o700)


# ---------------------------------------------------------------- named models and the package's public API


def test_a_registered_name_loads_its_folder_in_both_loaders(tmp_path):
    """`--model NAME` resolves in one place (pipeline/model/registry.py) for load_model and the labels
    stage's CTC loader alike; other ids pass through; a name is registered once."""
    from pipeline.model import registry
    from pipeline.stages.labels import load_ctc_model

    folder = save_tiny(tmp_path / "m", "wav2vec2-group", head="Wav2Vec2ForCTC")  # no tokenizer saved
    asked = []
    M.register_model("tiny-test", lambda cache_dir: asked.append(cache_dir) or folder)
    try:
        lm = M.load_model("tiny-test", device="cpu", cache_dir=tmp_path / "cache")
        assert lm.model_id == "tiny-test" and lm.revision == M.folder_fingerprint(folder)
        assert asked == [tmp_path / "cache"]
        with pytest.raises(ValueError, match="tiny-test: no CTC tokenizer"):  # found, then refused for what it is
            load_ctc_model("tiny-test", device="cpu", cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match="'tiny-test' is already registered"):
            M.register_model("tiny-test", lambda cache_dir: folder)
    finally:
        registry._NAMED.pop("tiny-test")
    assert M.resolve_model("facebook/wav2vec2-base") == "facebook/wav2vec2-base"
    assert M.resolve_model(folder) == folder
    with pytest.raises(FileNotFoundError, match="make demo-models"):
        load_ctc_model("default-ctc", device="cpu", cache_dir=tmp_path / "cache")


def test_no_import_cycle_with_demo_and_no_private_model_names_outside_the_package():
    """model ↔ demo was a cycle (load_model imported demo, demo imports the model); labels called
    model's private helpers. Now only registry.py imports demo, inside the one resolver that needs
    it, and modules outside pipeline/model/ use its public names only. The batching helpers (and
    the batch-size default the extract stage's config reads) come without torch."""
    import ast
    import re
    import subprocess
    import sys

    package = Path(M.__file__).parent
    importers = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom)
                     else [])
            if "pipeline.model.demo" in names and path.name != "demo.py":
                importers.append((path.name, node.lineno, "top level" if node in tree.body else "in a function"))
    assert [(name, where) for name, _, where in importers] == [("registry.py", "in a function")], importers
    imported_private = re.compile(r"from pipeline\.model[\w.]* import [^\n]*\b_[a-z]")
    as_m = re.compile(r"import pipeline\.model as M\b|from pipeline import model as M\b")  # M: another module elsewhere
    for path in package.parent.rglob("*.py"):
        if package not in path.parents:
            text = path.read_text()
            uses = imported_private.search(text) or (as_m.search(text) and re.search(r"\bM\._[a-z]", text))
            assert not uses, f"{path} uses a private name of pipeline.model"
    code = ("import sys; from pipeline.model import DEFAULT_MAX_BATCH_SAMPLES, chunk_windows, normalize_waveform; "
            "assert 'torch' not in sys.modules, 'the batching helpers import torch'; "
            "from pipeline.model import extract, load_model; "
            "assert 'pipeline.model.demo' not in sys.modules, 'the model imports demo'; "
            "import pipeline.model.demo")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extract_and_the_extract_stage_share_one_batch_size_default():
    """It was 100 s in the model, 160 s in the extract stage (which users get): one definition now."""
    import inspect

    from pipeline.stages.extract import ExtractConfig

    default = inspect.signature(M.extract).parameters["max_batch_samples"].default
    assert default == M.DEFAULT_MAX_BATCH_SAMPLES == ExtractConfig(run="r").max_batch_samples == 160 * RATE
