"""pipeline.algorithms.logmel: frame counts equal the model's, a sine lands in its mel bin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.algorithms.logmel import (MEL_LAYER, hz_from_mel, log_mel_frames, mel_filterbank, mel_from_hz,
                                        n_frames_for)

WAV2VEC2 = FrameGeometry.from_conv([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])


@pytest.mark.parametrize("n_samples, frames", [(0, 0), (399, 0), (400, 1), (719, 1), (720, 2), (16_000, 49),
                                               (16_080, 50)])
def test_frame_count_equals_the_conv_stack(n_samples, frames):
    out = log_mel_frames(np.zeros(n_samples))
    assert out.shape == (frames, 80) and out.dtype == np.float32
    assert WAV2VEC2.n_frames(n_samples) == frames


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 20_000), st.sampled_from([(400, 320), (250, 100), (64, 64)]))
def test_frame_count_matches_geometry_for_any_length(n_samples, geometry):
    window, hop = geometry
    out = log_mel_frames(np.ones(n_samples), window, hop, n_mels=20)
    assert out.shape[0] == n_frames_for(n_samples, window, hop) == FrameGeometry(window, hop).n_frames(n_samples)


def test_frame_i_sees_only_its_samples():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=16_000)
    full = log_mel_frames(audio)
    i = 17
    alone = log_mel_frames(audio[320 * i: 320 * i + 400])
    np.testing.assert_allclose(full[i], alone[0], rtol=1e-6)


@pytest.mark.parametrize("freq_hz", [300.0, 1000.0, 4000.0])
def test_a_sine_has_its_energy_in_the_mel_bin_of_its_frequency(freq_hz):
    t = np.arange(16_000) / 16_000
    out = log_mel_frames(np.sin(2 * np.pi * freq_hz * t))
    centres_hz = hz_from_mel(np.linspace(mel_from_hz(0), mel_from_hz(8000), 82))[1:-1]
    peaks = out.argmax(axis=1)
    assert (peaks == peaks[0]).all()  # a steady tone: every frame peaks in one bin
    # within the Hann main lobe (±2 FFT bins of 31.25 Hz) or 5 % of the frequency, whichever is wider
    assert abs(centres_hz[peaks[0]] - freq_hz) <= max(2 * 16_000 / 512, 0.05 * freq_hz)
    far = np.abs(centres_hz - freq_hz) > 0.5 * freq_hz
    assert (out[:, peaks[0]][:, None] - out[:, far]).min() > 5.0  # e^5 ≈ 150 times the energy elsewhere


def test_filters_cover_every_bin_and_bad_input_is_an_error():
    fb = mel_filterbank(80, 512, 16_000)
    assert fb.shape == (80, 257) and (fb.sum(axis=1) > 0).all()
    assert MEL_LAYER == -2
    with pytest.raises(ValueError, match="model has 3"):
        log_mel_frames(np.zeros(16_000), n_frames=3)
    with pytest.raises(ValueError, match="mono"):
        log_mel_frames(np.zeros((2, 800)))
    with pytest.raises(ValueError, match="NaN"):
        log_mel_frames(np.full(800, np.nan))
    silent = log_mel_frames(np.zeros(800))
    assert np.isfinite(silent).all() and silent.max() == pytest.approx(np.log(1e-10))
