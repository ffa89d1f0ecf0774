"""Extract a loaded model's layers, batched and chunked, exactly.

Why not `model(padded_batch, attention_mask)`: the first conv layer of group-norm models
(wav2vec2-base, HuBERT-base, WavLM-base) normalises each channel over the whole time axis, so
zero padding changes every frame (relative error ~1 on random weights); data2vec-audio's 5-layer
positional conv lets padded frames leak into real ones even with the mask. So here: normalise
each waveform on its own; run the conv encoder on the zero-padded batch but compute that
GroupNorm with each waveform's own statistics over its valid steps (every other conv step is
local: frame i reads samples [320 i, 320 i + 400) only); then run projection + transformer
batched with the frame-level attention mask, zeroing padded frames before every positional conv
layer. Result: one-at-a-time outputs within float32 rounding (relative 1e-5, tests/test_model.py).
The same whole-utterance statistics keep layers -1 and 0 exact when long recordings run in windows,
one window at a time: `extract_windows` streams them and normalises each window when it runs, so
memory beyond the recording's own samples is one window's activations, whatever its length.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.model.batching import (DEFAULT_MAX_BATCH_SAMPLES, STATS_PIECE_SAMPLES, ChunkWindow, NormalisedWave,
                                     chunk_windows, length_buckets, max_batch_size_for, normalize_waveform)
from pipeline.model.loading import DTYPES, LAYER_CNN, LoadedModel, parse_layers


def extract(loaded: LoadedModel, waveforms: Sequence[np.ndarray], layers: str | Sequence[int], *,
            max_chunk_s: float | None = 30.0, context_s: float = 2.0,
            max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
            max_batch_size: int | None = None) -> list[dict[int, np.ndarray]]:
    """Per waveform (float32, 16 kHz, mono), {layer: float32 array (n_frames x D)}.

    Exactly `geometry.n_frames(len(w))` rows each; row i is frame i. Equal to running the model
    on each waveform alone (relative 1e-5 in float32). Waveforms longer than `max_chunk_s` run
    in windows of `max_chunk_s` plus `context_s` on each side whose central frames are stitched:
    same rows and indices; layers -1 and 0 stay exact (input normalisation and group-norm
    statistics are the whole utterance's), transformer layers approximate (attention context is
    cut; ~1e-3 relative on random weights, see tests); they run one window at a time, exactly as
    `extract_windows` streams them. Waveforms shorter than the receptive field (400 samples) raise
    ValueError. Batches hold at most `max_batch_samples` padded samples (peak memory in the first
    conv layer ~ 3 x max_batch_samples / 5 x channels x 4 bytes: ~3 GB for the default 160 s with
    512 channels). Not thread-safe on one LoadedModel (it hooks its layers).
    """
    layers = parse_layers(layers, loaded.num_layers)
    max_batch_size = max_batch_size or max_batch_size_for(loaded.device.type)
    geo = loaded.geometry
    waves = [_prepared(loaded, i, w) for i, w in enumerate(waveforms)]
    outputs = [{layer: np.empty((geo.n_frames(len(w)), loaded.layer_dim(layer)), np.float32) for layer in layers}
               for w in waves]
    whole: list[int] = []  # waveforms that fit one window: batched
    for u, w in enumerate(waves):
        windows = chunk_windows(len(w), geo, max_chunk_s, context_s)
        if len(windows) == 1:
            whole.append(u)
            continue
        for first, block in _window_blocks(loaded, w, layers, windows):
            for layer in layers:
                outputs[u][layer][first:first + len(block[layer])] = block[layer]
    for batch in length_buckets([len(waves[u]) for u in whole], max_batch_samples, max_batch_size):
        chosen = [whole[i] for i in batch]
        result = _forward_batch(loaded, [waves[u] for u in chosen], [None] * len(chosen), layers)
        for b, u in enumerate(chosen):
            for layer in layers:
                outputs[u][layer][:] = result[layer][b, :len(outputs[u][layer])]
    return outputs


def n_windows(loaded: LoadedModel, n_samples: int, max_chunk_s: float | None = 30.0) -> int:
    """How many windows `extract` / `extract_windows` run a waveform of `n_samples` in (1: it fits one)."""
    return len(chunk_windows(n_samples, loaded.geometry, max_chunk_s, 0.0))


def extract_windows(loaded: LoadedModel, wave: np.ndarray, layers: str | Sequence[int], *,
                    max_chunk_s: float | None = 30.0, context_s: float = 2.0
                    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """One waveform's layers, streamed: (first_frame, {layer: float32 array (n x D)}) per window.

    The blocks tile frames [0, geometry.n_frames(len(wave))) in order and equal the rows of
    `extract(loaded, [wave], layers)[0]` bit for bit (same windows, same computation). Memory
    beyond `wave`, whatever its length: the activations of the window being computed and of the block the
    caller still holds (~34 s x 50 frames x (512 + 13 x 768) x 4 bytes = 70 MB for base-size
    models, all layers); normalisation happens window by window (NormalisedWave), so there is no
    full-length normalised copy. The waveform is checked now; the model runs as blocks are taken.
    """
    layers = parse_layers(layers, loaded.num_layers)
    w = _checked(0, wave, loaded.geometry)
    if loaded.do_normalize:  # each window is normalised when it runs: no full-length normalised copy
        w = NormalisedWave(w)
    return _window_blocks(loaded, w, layers, chunk_windows(len(w), loaded.geometry, max_chunk_s, context_s))


def _prepared(loaded: LoadedModel, index: int, wave: np.ndarray) -> np.ndarray:
    """Checked float32 samples, normalised with whole-utterance statistics when the model wants it."""
    w = _checked(index, wave, loaded.geometry)
    return normalize_waveform(w) if loaded.do_normalize else w


def _window_blocks(loaded: LoadedModel, w: np.ndarray, layers: list[int],
                   windows: list[ChunkWindow]) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Run the windows of one prepared waveform one at a time; yield each one's kept rows."""
    stats = None  # the group-norm statistics of a waveform that fits one window are computed in its batch
    if len(windows) > 1 and loaded.first_group_norm() is not None:
        stats = _conv0_stats(loaded, w)
    for win in windows:
        result = _forward_batch(loaded, [w[win.start_sample:win.start_sample + win.n_samples]], [stats], layers)
        yield (win.first_frame + win.keep_start,
               {layer: result.pop(layer)[0, win.keep_start:win.keep_stop] for layer in layers})


def _checked(index: int, wave: np.ndarray, geo: FrameGeometry) -> np.ndarray:
    w = np.asarray(wave)
    if w.ndim != 1:
        raise ValueError(f"waveform {index}: expected 1-D mono samples at {geo.sample_rate_hz} Hz, "
                         f"got shape {w.shape}; downmix before extraction")
    if len(w) < geo.receptive_field_samples:
        raise ValueError(f"waveform {index}: {len(w)} samples is shorter than one frame "
                         f"({geo.receptive_field_samples} samples); quarantine it as too_short first")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not all(np.isfinite(w[a:a + STATS_PIECE_SAMPLES]).all() for a in range(0, len(w), STATS_PIECE_SAMPLES)):
        raise ValueError(f"waveform {index}: contains NaN or Inf samples; quarantine it as non_finite first")
    return w


def _autocast(loaded: LoadedModel) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=loaded.device.type, dtype=DTYPES[loaded.dtype],
                          enabled=loaded.dtype != "float32")


@torch.inference_mode()
def _forward_batch(loaded: LoadedModel, waves: list[np.ndarray],
                   stats: list[tuple[torch.Tensor, torch.Tensor] | None],
                   layers: list[int]) -> dict[int, np.ndarray]:
    """{layer: float32 array (B x T_max x D)} for normalised waveforms; rows past a waveform's frames are padding."""
    model, dev = loaded.model, loaded.device
    n_frames = [loaded.geometry.n_frames(len(w)) for w in waves]
    wanted = [layer for layer in layers if layer >= 0]
    captured: dict[int, torch.Tensor] = {}
    with _autocast(loaded):
        feats = _conv_features(loaded, waves, stats, n_frames)  # (B, T, C)
        if LAYER_CNN in layers:
            captured[LAYER_CNN] = feats
        if wanted:
            mask = None
            if len(set(n_frames)) > 1:
                mask = torch.arange(feats.shape[1], device=dev)[None, :] < torch.tensor(n_frames, device=dev)[:, None]
            projected = model.feature_projection(feats)
            hidden = projected[0] if isinstance(projected, tuple) else projected  # HuBERT returns a tensor
            captured.update(_run_encoder(model.encoder, hidden, mask, wanted))
    return {layer: captured[layer].float().cpu().numpy() for layer in layers}


def _to_device(array: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(array)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _conv_features(loaded: LoadedModel, waves: list[np.ndarray],
                   stats: list[tuple[torch.Tensor, torch.Tensor] | None], n_frames: list[int]) -> torch.Tensor:
    """Conv encoder output (B, T_max, C) of zero-padded waveforms, zero past each one's frames.

    Every conv is local: frame i reads samples [hop i, hop i + rf) only. The one non-local step
    is the first layer's GroupNorm in group-norm models (per channel, over all time steps), so it
    is computed here with each waveform's own statistics over its valid steps (or the given
    whole-utterance `stats` for a window of a long one): what the model does to it alone.
    """
    encoder, dev = loaded.model.feature_extractor, loaded.device
    padded = np.zeros((len(waves), max(len(w) for w in waves)), np.float32)
    for b, w in enumerate(waves):
        padded[b, :len(w)] = w
    x = _to_device(padded, dev)[:, None]
    first = loaded.first_group_norm()
    alone = len(waves) == 1 and stats[0] is None  # the model's own conv stack is already exact for it
    if first is None or alone:
        h = encoder(x[:, 0])
    else:
        h = first.conv(x).float()  # (B, C, L0); statistics in float32 even under autocast
        k, s = first.conv.kernel_size[0], first.conv.stride[0]
        norm = first.layer_norm
        for b, w in enumerate(waves):  # GroupNorm with C groups of 1 channel: per-channel mean, biased var
            if stats[b] is None:  # the model's own GroupNorm on this waveform's steps (the padding is never read)
                n = (len(w) - k) // s + 1
                h[b, :, :n] = torch.nn.functional.group_norm(h[b:b + 1, :, :n], norm.num_groups, norm.weight.float(),
                                                             norm.bias.float(), norm.eps)[0]
                continue
            mean, var = (t.to(dev) for t in stats[b])
            scale = torch.rsqrt(var + norm.eps) * norm.weight.float()
            h[b].mul_(scale[:, None]).add_((norm.bias.float() - mean * scale)[:, None])
        h = first.activation(h)
        for layer in encoder.conv_layers[1:]:
            h = layer(h)
    feats = h.transpose(1, 2)
    if len(waves) == 1:  # no padding: every frame is valid
        return feats
    valid = torch.arange(feats.shape[1], device=dev)[None, :] < torch.tensor(n_frames, device=dev)[:, None]
    return feats * valid[:, :, None].to(feats.dtype)


@torch.inference_mode()
def _conv0_stats(loaded: LoadedModel, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-utterance GroupNorm statistics (mean, biased var per channel) of the first conv layer,
    from pieces of STATS_PIECE_SAMPLES (memory bounded) merged exactly (Chan et al.) in float64."""
    first = loaded.first_group_norm()
    k, s = first.conv.kernel_size[0], first.conv.stride[0]
    n_steps = (len(wave) - k) // s + 1
    step = STATS_PIECE_SAMPLES // s
    count, mean, m2 = 0, 0.0, 0.0
    with _autocast(loaded):
        for j0 in range(0, n_steps, step):
            j1 = min(n_steps, j0 + step)
            seg = _to_device(np.ascontiguousarray(wave[j0 * s:(j1 - 1) * s + k]), loaded.device)
            piece_var, piece_mean = torch.var_mean(first.conv(seg[None, None])[0].float(), dim=-1, correction=0)
            n, piece_mean = j1 - j0, piece_mean.double()
            delta, total = piece_mean - mean, count + n
            mean = mean + delta * (n / total)
            m2 = m2 + piece_var.double() * n + delta.square() * (count * n / total)
            count = total
    return mean.float(), (m2 / count).float()


class _StopForward(Exception):
    """Raised by a hook once the last wanted layer has run: later layers are skipped."""


def _run_encoder(encoder: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
                 wanted: list[int]) -> dict[int, torch.Tensor]:
    """Run the model's own encoder.forward; hooks record layer 0 (input of the first layer) and
    the outputs of layers 1..N, as `hidden_states` reports them.

    The masking hooks on the positional conv layers zero padded frames before each of them: a
    no-op for the single conv of wav2vec2 / HuBERT / WavLM (the encoder already zeroes them), the
    fix for data2vec-audio's stack of 5 convs, where padding would otherwise leak into real frames.
    """
    captured: dict[int, torch.Tensor] = {}
    last = max(wanted)
    handles = []

    def keep_input(module, args, kwargs):
        captured[0] = args[0] if args else kwargs["hidden_states"]

    def keep_output(index):
        def hook(module, args, output):
            if index in wanted:
                captured[index] = output[0] if isinstance(output, tuple) else output
            if index == last:
                raise _StopForward
        return hook

    def zero_padding(module, args):
        return (args[0] * mask[:, None, :].to(args[0].dtype),) + tuple(args[1:])

    try:
        if mask is not None:  # data2vec-audio: a stack of (B, C, T) conv layers
            for conv_layer in getattr(encoder.pos_conv_embed, "layers", []):
                handles.append(conv_layer.register_forward_pre_hook(zero_padding))
        handles.append(encoder.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
        if last == 0:
            handles.append(encoder.layers[0].register_forward_pre_hook(_raise_stop))
        for i, layer in enumerate(encoder.layers, start=1):
            handles.append(layer.register_forward_hook(keep_output(i)))
        encoder(hidden, attention_mask=mask)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def _raise_stop(module, args):
    raise _StopForward
