"""Log-mel filterbank frames on a model's frame geometry: one 80-bin vector per model frame.

The acoustic target of `cca_mel`. Frame i is computed from exactly the samples model frame i sees:
[hop · i, hop · i + window) (wav2vec2 family at 16 kHz: window 400, hop 320, i.e. 25 ms every 20 ms),
so the log-mel frame count equals the model's frame count for every length:
floor((n − window) / hop) + 1 when n ≥ window, else 0 (`FrameGeometry.n_frames`).

Per frame: a periodic Hann window of `window` samples, zero-padded to `n_fft` (the next power of
two, 512 for 400), power spectrum |rfft|², HTK-scale triangular mel filters (2595 log10(1 + f/700);
no area normalisation, as torchaudio's and Kaldi's defaults) from `f_min_hz` to `f_max_hz` (0 and
the Nyquist frequency by default), natural log floored at 1e-10. No dither, no pre-emphasis, no
mean normalisation: CCA centres and whitens its inputs anyway. float64 inside, float32 out.

`extract` stores these frames as one more layer of the frames table with layer id `MEL_LAYER`
(-2; -1 is the CNN output and 0…N the transformer's hidden states).
"""

from __future__ import annotations

import numpy as np

MEL_LAYER = -2  # the frames table's layer id for log-mel frames
N_MELS = 80
LOG_FLOOR = 1e-10


def mel_from_hz(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def hz_from_mel(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate_hz: int, f_min_hz: float = 0.0,
                   f_max_hz: float | None = None) -> np.ndarray:
    """(n_mels × n_fft // 2 + 1) triangular filters, peaks evenly spaced on the HTK mel scale."""
    f_max_hz = sample_rate_hz / 2 if f_max_hz is None else f_max_hz
    if not 0 <= f_min_hz < f_max_hz <= sample_rate_hz / 2:
        raise ValueError(f"mel filters need 0 <= f_min_hz < f_max_hz <= {sample_rate_hz / 2} Hz, "
                         f"got {f_min_hz} and {f_max_hz}")
    edges = hz_from_mel(np.linspace(mel_from_hz(f_min_hz), mel_from_hz(f_max_hz), n_mels + 2))
    bins_hz = np.arange(n_fft // 2 + 1) * sample_rate_hz / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def n_frames_for(n_samples: int, window_samples: int, hop_samples: int) -> int:
    """The conv stack's frame count: floor((n − window) / hop) + 1 for n ≥ window, else 0."""
    return (n_samples - window_samples) // hop_samples + 1 if n_samples >= window_samples else 0


def log_mel_frames(audio, window_samples: int = 400, hop_samples: int = 320, n_frames: int | None = None,
                   sample_rate_hz: int = 16_000, n_mels: int = N_MELS, n_fft: int | None = None,
                   f_min_hz: float = 0.0, f_max_hz: float | None = None) -> np.ndarray:
    """(n_frames × n_mels) float32 log-mel energies of mono `audio`, frame i from samples
    [hop · i, hop · i + window).

    `n_frames` defaults to the conv geometry's count (`n_frames_for`); pass the model's count to
    assert it: a different value raises ValueError (the geometry and the model disagree).
    """
    x = np.asarray(audio, np.float64)
    if x.ndim != 1:
        raise ValueError(f"log-mel needs mono audio (1-D), got shape {x.shape}")
    if window_samples < 1 or hop_samples < 1:
        raise ValueError(f"window_samples and hop_samples must be positive, got {window_samples}, {hop_samples}")
    if not np.isfinite(x).all():
        raise ValueError("the audio holds NaN or Inf samples")
    expected = n_frames_for(x.size, window_samples, hop_samples)
    if n_frames is not None and n_frames != expected:
        raise ValueError(f"{x.size} samples give {expected} frames of {window_samples} every {hop_samples} "
                         f"samples, but the model has {n_frames}: pass the model's conv geometry")
    n_fft = int(2 ** np.ceil(np.log2(window_samples))) if n_fft is None else n_fft
    if n_fft < window_samples:
        raise ValueError(f"n_fft={n_fft} is shorter than the window ({window_samples} samples)")
    if expected == 0:
        return np.zeros((0, n_mels), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, window_samples)[::hop_samples][:expected]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window_samples) / window_samples)  # periodic
    power = np.abs(np.fft.rfft(frames * hann, n=n_fft, axis=1)) ** 2
    mel = power @ mel_filterbank(n_mels, n_fft, sample_rate_hz, f_min_hz, f_max_hz).T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)
