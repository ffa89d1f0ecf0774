"""Frame arithmetic: counts equal the real conv stack's output length; centres; intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.algorithms.geometry import FrameGeometry

KERNELS = (10, 3, 3, 3, 3, 2, 2)
STRIDES = (5, 2, 2, 2, 2, 2, 2)
W2V = FrameGeometry.from_conv(KERNELS, STRIDES)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                            conv_dim=(2,) * 7, conv_kernel=KERNELS, conv_stride=STRIDES,
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=1)
    return Wav2Vec2Model(config).eval()


def test_wav2vec2_geometry_is_400_320():
    assert (W2V.receptive_field_samples, W2V.hop_samples, W2V.sample_rate_hz) == (400, 320, 16_000)
    assert W2V.frame_rate_hz == 50.0
    assert [W2V.n_frames(n) for n in (0, 399, 400, 719, 720, 16_000)] == [0, 0, 1, 1, 2, 49]


def test_from_config_reads_conv_stack(tiny_model):
    assert FrameGeometry.from_config(tiny_model.config) == W2V


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2_000_000))
def test_n_frames_equals_model_formula(tiny_model, n):
    model_count = int(tiny_model._get_feat_extract_output_lengths(torch.tensor(n)))
    # below one receptive field the model's formula goes to 0 or negative (conv would fail): 0 frames
    assert W2V.n_frames(n) == max(model_count, 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(400, 40_000))
def test_n_frames_equals_real_conv_output(tiny_model, n):
    with torch.inference_mode():
        out = tiny_model.feature_extractor(torch.zeros(1, n))
    assert out.shape[-1] == W2V.n_frames(n)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=8),
       st.integers(0, 100_000))
def test_closed_form_equals_iterated_conv_lengths(stack, n):
    kernels, strides = zip(*stack)
    length = n
    for k, s in stack:  # torch.nn.Conv1d output length, stage by stage; too short -> no frames
        length = (length - k) // s + 1 if length >= k else 0
    assert FrameGeometry.from_conv(kernels, strides).n_frames(n) == length


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7))
def test_centre_and_start(i):
    assert W2V.frame_start_sample(i) == 320 * i
    assert W2V.frame_centre_s(i) == (320 * i + 200) / 16_000
    assert W2V.frame_centres_s(np.array([i]))[0] == W2V.frame_centre_s(i)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_monotone_and_inverse(n, k):
    assert W2V.n_frames(n + 1) >= W2V.n_frames(n)
    assert W2V.n_frames(W2V.n_samples_for_frames(k)) == k
    assert W2V.n_frames(W2V.n_samples_for_frames(k) - 1) == k - 1
    frames = np.arange(k % 5000 + 2)
    centres = W2V.frame_centres_s(frames)
    assert np.all(np.diff(centres) > 0)
    assert np.array_equal(W2V.n_frames_array(np.array([n, k])), [W2V.n_frames(n), W2V.n_frames(k)])


@settings(max_examples=300, deadline=None)
@given(st.floats(-1.0, 30.0), st.floats(0.0, 5.0), st.one_of(st.none(), st.integers(0, 2000)))
def test_frames_for_interval_is_centre_rule(start_s, length_s, n_frames):
    end_s = start_s + length_s
    got = W2V.frames_for_interval(start_s, end_s, n_frames)
    limit = 2000 if n_frames is None else n_frames
    brute = [i for i in range(limit) if start_s <= W2V.frame_centre_s(i) < end_s]
    assert list(got) == brute


def test_frames_for_interval_on_exact_centres():
    # frame 0 centre 0.0125 s, frame 1 centre 0.0325 s: half-open [start, end)
    assert list(W2V.frames_for_interval(0.0125, 0.0325)) == [0]
    assert list(W2V.frames_for_interval(0.0, 0.0125)) == []
    assert list(W2V.frames_for_interval(0.0125, 0.0126)) == [0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=10, unique=True))
def test_adjacent_intervals_tile_frames(bounds):
    bounds = sorted(bounds)
    pieces = [list(W2V.frames_for_interval(a, b)) for a, b in zip(bounds, bounds[1:])]
    joined = [i for p in pieces for i in p]
    assert joined == list(W2V.frames_for_interval(bounds[0], bounds[-1]))


def test_rejects_bad_stacks():
    with pytest.raises(ValueError):
        FrameGeometry.from_conv([10, 3], [5])
    with pytest.raises(ValueError):
        FrameGeometry(0, 320, 16_000)
