"""Frame geometry of a wav2vec2-family conv feature encoder: which samples each frame sees.

Composed from the conv stack (`conv_kernel`, `conv_stride`), never from `round(n / 320)`.
For wav2vec2 / HuBERT / WavLM / data2vec-audio (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2):
receptive field 400 samples (25 ms), hop 320 samples (20 ms, ~50 frames per second);
frame i covers samples [320 i, 320 i + 400) and its centre is (320 i + 200) / 16000 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.corpus.records import TARGET_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class FrameGeometry:
    receptive_field_samples: int
    hop_samples: int
    sample_rate_hz: int = TARGET_SAMPLE_RATE_HZ

    def __post_init__(self) -> None:
        if self.receptive_field_samples < 1 or self.hop_samples < 1 or self.sample_rate_hz < 1:
            raise ValueError(f"FrameGeometry needs positive sizes, got {self}")

    @classmethod
    def from_conv(cls, kernels: Sequence[int], strides: Sequence[int],
                  sample_rate_hz: int = TARGET_SAMPLE_RATE_HZ) -> FrameGeometry:
        """Compose a conv stack: rf = 1 + sum (k_i - 1) * prod_{j<i} s_j, hop = prod s_i."""
        if len(kernels) != len(strides) or not kernels:
            raise ValueError(f"conv_kernel {list(kernels)} and conv_stride {list(strides)} must be non-empty "
                             "and of equal length")
        rf, hop = 1, 1
        for k, s in zip(kernels, strides):
            rf += (int(k) - 1) * hop
            hop *= int(s)
        return cls(rf, hop, sample_rate_hz)

    @classmethod
    def from_config(cls, config: Any, sample_rate_hz: int = TARGET_SAMPLE_RATE_HZ) -> FrameGeometry:
        """From a transformers config with `conv_kernel` and `conv_stride` (any wav2vec2-family model).

        Adapter layers (`add_adapter`) act after the encoder's hidden states, so they do not change
        the frames of `hidden_states`; they are ignored here on purpose.
        """
        return cls.from_conv(list(config.conv_kernel), list(config.conv_stride), sample_rate_hz)

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate_hz / self.hop_samples

    def n_frames(self, n_samples: int) -> int:
        """floor((n - rf) / hop) + 1 for n >= rf, else 0 (equals the conv stack's output length)."""
        n = int(n_samples)
        return (n - self.receptive_field_samples) // self.hop_samples + 1 if n >= self.receptive_field_samples else 0

    def n_frames_array(self, n_samples: np.ndarray) -> np.ndarray:
        n = np.asarray(n_samples, dtype=np.int64)
        return np.where(n >= self.receptive_field_samples,
                        (n - self.receptive_field_samples) // self.hop_samples + 1, 0)

    def n_samples_for_frames(self, n_frames: int) -> int:
        """The fewest samples that give `n_frames` frames (0 for 0 frames)."""
        return 0 if n_frames <= 0 else (n_frames - 1) * self.hop_samples + self.receptive_field_samples

    def frame_start_sample(self, frame: int) -> int:
        return self.hop_samples * int(frame)

    def frame_start_samples(self, frames: np.ndarray) -> np.ndarray:
        return self.hop_samples * np.asarray(frames, dtype=np.int64)

    def frame_centre_s(self, frame: int) -> float:
        """(hop * i + rf / 2) / sample rate."""
        return (self.hop_samples * int(frame) + self.receptive_field_samples / 2) / self.sample_rate_hz

    def frame_centres_s(self, frames: np.ndarray) -> np.ndarray:
        """Vectorised `frame_centre_s` (same float64 operations, so the values are identical)."""
        frames = np.asarray(frames, dtype=np.int64)
        return (self.hop_samples * frames + self.receptive_field_samples / 2) / self.sample_rate_hz

    def frame_bounds_s(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """(start_s, end_s) of frames as intervals: one hop centred on each frame's centre (how CTC
        labels, one per frame, become segments)."""
        frames = np.asarray(frames, dtype=np.int64)
        hop, rate = self.hop_samples, self.sample_rate_hz
        centre = hop * frames + self.receptive_field_samples / 2
        return (centre - hop / 2) / rate, (centre + hop / 2) / rate

    def frame_labels(self, frames, starts_s, ends_s, labels) -> np.ndarray:
        """The label of the interval holding each frame's centre (`labels_at` of `frame_centres_s`)."""
        return labels_at(self.frame_centres_s(frames), starts_s, ends_s, labels)

    def frames_for_interval(self, start_s: float, end_s: float, n_frames: int | None = None) -> range:
        """Frames whose centre lies in [start_s, end_s), clipped to [0, n_frames) when given.

        The estimate from the inverse formula is corrected against `frame_centre_s` itself, so a
        frame is inside exactly when `start_s <= frame_centre_s(i) < end_s` (no float surprises).
        """
        lo = self._first_frame_at_or_after(start_s)
        hi = self._first_frame_at_or_after(end_s) if end_s > start_s else lo
        lo = max(lo, 0)
        hi = max(hi, lo)
        if n_frames is not None:
            lo, hi = min(lo, n_frames), min(hi, n_frames)
        return range(lo, hi)

    def _first_frame_at_or_after(self, t_s: float) -> int:
        """Smallest integer i with frame_centre_s(i) >= t_s."""
        i = math.ceil((t_s * self.sample_rate_hz - self.receptive_field_samples / 2) / self.hop_samples)
        while self.frame_centre_s(i - 1) >= t_s:
            i -= 1
        while self.frame_centre_s(i) < t_s:
            i += 1
        return i

    def as_dict(self) -> dict[str, int]:
        return {"receptive_field_samples": self.receptive_field_samples, "hop_samples": self.hop_samples,
                "sample_rate_hz": self.sample_rate_hz}


def labels_at(times_s, starts_s, ends_s, labels) -> np.ndarray:
    """The label of the interval holding each time, start inclusive, end exclusive; None outside every
    interval. Intervals must not overlap (checked at ingest); any order. The one Python definition of a
    frame's label (times = frame centres); its SQL twin is the `frame_labels` macro in
    sql/macros/frame_labels.sql, and tests/test_geometry.py checks that both agree."""
    times = np.asarray(times_s, dtype=np.float64)
    out = np.full(len(times), None, dtype=object)
    if not len(starts_s):
        return out
    starts, ends = np.asarray(starts_s, dtype=np.float64), np.asarray(ends_s, dtype=np.float64)
    order = np.argsort(starts, kind="stable")
    starts, ends, names = starts[order], ends[order], np.asarray(labels, dtype=object)[order]
    idx = np.searchsorted(starts, times, side="right") - 1
    inside = (idx >= 0) & (times < ends[np.clip(idx, 0, None)])
    out[inside] = names[idx[inside]]
    return out
