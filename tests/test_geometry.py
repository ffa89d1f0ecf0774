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


def test_python_and_sql_label_frames_alike_at_every_boundary(tmp_path):
    """The one rule, twice: geometry.labels_at (extract, analyze) and the SQL macro frame_labels agree,
    intervals starting and ending exactly on frame centres included (start inclusive, end exclusive)."""
    import pyarrow as pa

    from pipeline.algorithms.geometry import labels_at
    from pipeline.warehouse import Warehouse, schemas, vectors as vector_encoding

    geo, n = W2V, 60
    wh = Warehouse(tmp_path)
    wh.ensure_facts("g", {"geometry": geo.as_dict()})
    centres = geo.frame_centres_s(np.arange(n))
    # boundaries on centres, between centres and a gap: [c0, c3) a, [c3, c7) b, (gap), [mid(c9, c10), c20) c …
    bounds = [(centres[0], centres[3], "a"), (centres[3], centres[7], "b"),
              ((centres[9] + centres[10]) / 2, centres[20], "c"), (centres[20], centres[41] + 1e-12, "d"),
              (centres[45], centres[59], "e")]
    starts, ends, labels = zip(*bounds)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 4)).astype(np.float16)
    frames = pa.Table.from_arrays(
        [pa.array(["u"] * n), pa.array(np.arange(n, dtype=np.int32)), pa.array(centres.astype(np.float32)),
         pa.array([None] * n, pa.string()), pa.array([None] * n, pa.string()),
         vector_encoding.encode(vectors, "float16")],
        schema=schemas.frames_schema(4, "float16"))
    segments = pa.Table.from_pylist(
        [{"utterance_id": "u", "tier": "t", "idx": i, "label": lab, "start_s": float(a), "end_s": float(b),
          "source": "test"} for i, (a, b, lab) in enumerate(bounds)], schema=schemas.SEGMENTS)
    wh.commit("g", "extract", 0, [wh.write("frames", frames, "g", 0, layer=1), wh.write("segments", segments, "g", 0)])
    sql = wh.connect().sql("select frame, label from frame_labels('g', 't') where layer = 1 order by frame").fetchall()
    python = labels_at(centres, starts, ends, labels)
    assert [label for _, label in sql] == python.tolist() == geo.frame_labels(np.arange(n), starts, ends, labels).tolist()
    assert python[3] == "b" and python[2] == "a" and python[7] is None and python[20] == "d" and python[59] is None
