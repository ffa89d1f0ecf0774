"""How waveforms reach the forward pass: normalised over the whole utterance, long ones cut into
windows, the rest grouped into batches of similar length. Plain numpy; `labels` uses the same
normalisation and windows for its CTC model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.corpus.records import TARGET_SAMPLE_RATE_HZ

NORM_EPS = 1e-7  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
STATS_PIECE_SAMPLES = 30 * TARGET_SAMPLE_RATE_HZ  # conv0 output of a piece: 512 x 96k floats, 197 MB
# Padded audio per forward pass (the default of `extract` and of the extract stage's --max-batch-samples):
# 160 s. Peak memory is in the first conv layer: 160 s x 3,200 steps/s x 512 channels x 4 bytes = 1 GB
# per copy, up to 3 copies alive.
DEFAULT_MAX_BATCH_SAMPLES = 160 * TARGET_SAMPLE_RATE_HZ
DEFAULT_MAX_BATCH_SIZE = 32  # on CUDA
CPU_MAX_BATCH_SIZE = 8


def max_batch_size_for(device_type: str) -> int:
    """Utterances per forward pass when none is given: 8 on CPU, 32 elsewhere. On CPU a batch's activations
    should stay in the caches (the first conv layer's output of 8 utterances of 2 s is 56 MB; of 32, 220 MB):
    `extract` on 0.56 h with the default model took 53 s at 8 and 63 s at 32 on 2 cores, with 4/16 no better
    than 8 (bench/README.md). A GPU wants large length-bucketed batches: `DEFAULT_MAX_BATCH_SAMPLES` of padded
    audio bounds them."""
    return CPU_MAX_BATCH_SIZE if device_type == "cpu" else DEFAULT_MAX_BATCH_SIZE


def length_buckets(lengths: Sequence[int], max_batch_samples: int, max_batch_size: int) -> list[list[int]]:
    """Group indices into batches, longest first, neighbours in length order together.

    Each batch holds at most `max_batch_size` items and at most `max_batch_samples` padded
    samples (items x longest); an item longer than `max_batch_samples` gets a batch of its own.
    """
    if max_batch_samples < 1 or max_batch_size < 1:
        raise ValueError(f"max_batch_samples ({max_batch_samples}) and max_batch_size ({max_batch_size}) must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > max_batch_samples):
            batches.append(current)
            current = []
        if not current:
            longest = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class ChunkWindow:
    """One window of a long waveform: samples [start_sample, start_sample + n_samples).

    Window frame j is global frame `first_frame + j`; frames [keep_start, keep_stop) of the window
    are kept, the rest is context.
    """

    start_sample: int
    n_samples: int
    first_frame: int
    keep_start: int
    keep_stop: int


def chunk_windows(n_samples: int, geometry: FrameGeometry, max_chunk_s: float | None,
                  context_s: float) -> list[ChunkWindow]:
    """Split a waveform longer than `max_chunk_s` into windows of that many frames plus context.

    Windows start at multiples of the hop, so their frames are global frames; the kept ranges
    tile [0, n_frames) exactly once.
    """
    n_frames = geometry.n_frames(n_samples)
    hop, rate = geometry.hop_samples, geometry.sample_rate_hz
    if not max_chunk_s or n_samples <= max_chunk_s * rate:
        return [ChunkWindow(0, n_samples, 0, 0, n_frames)]
    if context_s < 0:
        raise ValueError(f"context_s must be >= 0, got {context_s}")
    chunk_frames = max(1, int(max_chunk_s * rate) // hop)
    context_frames = int(round(context_s * rate / hop))
    windows = []
    for a in range(0, n_frames, chunk_frames):
        b = min(a + chunk_frames, n_frames)
        first, last = max(0, a - context_frames), min(n_frames, b + context_frames)
        start = first * hop
        # the last window keeps the trailing samples that do not make a frame, like the full pass
        stop = n_samples if last == n_frames else geometry.n_samples_for_frames(last)
        windows.append(ChunkWindow(start, stop - start, first, a - first, b - first))
    return windows


def normalize_waveform(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole utterance (eps 1e-7, like Wav2Vec2FeatureExtractor).

    Two float64 passes over pieces of STATS_PIECE_SAMPLES: memory beyond the float32 result is
    one piece (a float64 copy of a 2-hour recording would be 920 MB). A waveform of one piece
    gets numpy's whole-array `mean` and `var` bit for bit; longer ones differ by float64 rounding.
    """
    w = np.asarray(wave)
    if len(w) == 0:
        return np.zeros(0, np.float32)
    normalised = NormalisedWave(w)
    out = np.empty(len(w), np.float32)
    for a in range(0, len(w), STATS_PIECE_SAMPLES):
        out[a:a + STATS_PIECE_SAMPLES] = normalised[a:a + STATS_PIECE_SAMPLES]
    return out


class NormalisedWave:
    """A waveform normalised slice by slice on demand: `self[a:b]` equals `normalize_waveform(wave)[a:b]`
    bit for bit (same whole-utterance mean and scale, elementwise), without a full-length copy."""

    def __init__(self, wave: np.ndarray):
        self.wave = wave
        starts = range(0, len(wave), STATS_PIECE_SAMPLES)

        def piece(a: int) -> np.ndarray:
            return wave[a:a + STATS_PIECE_SAMPLES].astype(np.float64)

        self.mean = sum(np.add.reduce(piece(a)) for a in starts) / len(wave)
        var = sum(np.add.reduce(np.square(piece(a) - self.mean)) for a in starts) / len(wave)
        self.scale = np.sqrt(var + NORM_EPS)

    def __len__(self) -> int:
        return len(self.wave)

    def __getitem__(self, where: slice) -> np.ndarray:
        return ((self.wave[where].astype(np.float64) - self.mean) / self.scale).astype(np.float32)
