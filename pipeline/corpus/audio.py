"""Decode audio bytes with soundfile, check them, downmix to mono and resample to 16 kHz.

Resampling uses soxr (libsoxr, the resampler librosa defaults to): band-limited, quality "VHQ",
and fast enough that it never shows in an extraction profile.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct

import numpy as np
import soundfile as sf
import soxr

from pipeline.corpus.records import TARGET_SAMPLE_RATE_HZ, Quarantine

MIN_SAMPLES = 400  # one frame's receptive field at 16 kHz (wav2vec2 conv stack)
MAX_AUDIO_BYTES_ENV = "PIPELINE_MAX_AUDIO_BYTES"
DEFAULT_MAX_AUDIO_BYTES = 4 * 1024**3  # 4 GiB: ~37 h of 16 kHz 16-bit mono; read whole into memory
FILE_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a fifo", stat.S_ISCHR: "a character device",
              stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def max_audio_bytes() -> int:
    """The size cap of one audio file: env PIPELINE_MAX_AUDIO_BYTES, else 4 GiB."""
    value = os.environ.get(MAX_AUDIO_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_AUDIO_BYTES
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"{MAX_AUDIO_BYTES_ENV}={value!r} is not a positive number of bytes "
                         f"(unset it for the default, {DEFAULT_MAX_AUDIO_BYTES})")
    return int(value)


def regular_file(path: str | os.PathLike) -> os.stat_result:
    """stat of `path` (links followed) if it is a regular file; else Quarantine `not_a_regular_file`.

    A device (/dev/zero) never ends and a fifo blocks until some writer comes: neither is read."""
    info = os.stat(path)
    _check_regular(path, info)
    return info


def _check_regular(path: str | os.PathLike, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in FILE_KINDS.items() if test(info.st_mode)), "not a plain file")
        raise Quarantine("not_a_regular_file", f"{path} is {kind}, not a regular file: it is not read")


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of one audio file, read only from a regular file of at most `max_bytes` (default
    `max_audio_bytes()`). Raises Quarantine: `not_a_regular_file`, `audio_too_large`, or
    `missing_audio` (no such file, e.g. a broken link)."""
    limit = max_audio_bytes() if max_bytes is None else max_bytes
    try:
        regular_file(path)  # before opening: opening a fifo or a device can block or act
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Quarantine("missing_audio", f"{path}: no such file") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        _check_regular(path, info)  # replaced between stat and open
        if info.st_size > limit:
            raise _too_large(path, f"{info.st_size} bytes", limit)
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew while read
        raise _too_large(path, "it grew while read", limit)
    return data


def _too_large(path: str | os.PathLike, found: str, limit: int) -> Quarantine:
    return Quarantine("audio_too_large", f"{path}: over the cap of {limit} bytes ({found}); "
                                         f"set {MAX_AUDIO_BYTES_ENV} higher to read it")


def decode(data: bytes, name: str = "") -> tuple[np.ndarray, int, int]:
    """Bytes → (float32 mono waveform at 16 kHz, source sample rate, source channels).

    Raises Quarantine with `decode_error`, `empty_audio` or `non_finite`.
    """
    if not data:
        raise Quarantine("decode_error", f"{name or 'audio'}: zero bytes")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the bytes", str(err))
        raise Quarantine("decode_error", f"{name or 'audio'}: {message}") from None
    declared = declared_frames(data)
    if declared is not None and declared > wave.shape[0]:
        raise Quarantine(
            "decode_error",
            f"{name or 'audio'}: truncated: the header declares {declared} samples per channel, "
            f"the file holds {wave.shape[0]}",
        )
    channels = wave.shape[1]
    if wave.shape[0] == 0:
        raise Quarantine("empty_audio", f"{name or 'audio'}: zero samples")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise Quarantine("non_finite", f"{name or 'audio'}: {bad} NaN or Inf samples of {wave.size}")
    mono = wave.mean(axis=1) if channels > 1 else wave[:, 0]
    return resample(mono, rate), int(rate), int(channels)


def resample(wave: np.ndarray, rate_hz: int) -> np.ndarray:
    if rate_hz == TARGET_SAMPLE_RATE_HZ:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(wave, rate_hz, TARGET_SAMPLE_RATE_HZ, quality="VHQ").astype(np.float32)


def check_length(n_samples: int, name: str, min_samples: int = MIN_SAMPLES) -> None:
    if n_samples == 0:
        raise Quarantine("empty_audio", f"{name}: zero samples after resampling")
    if n_samples < min_samples:
        raise Quarantine(
            "too_short",
            f"{name}: {n_samples} samples at 16 kHz, fewer than one frame ({min_samples})",
        )


def declared_frames(data: bytes) -> int | None:
    """Samples per channel that a RIFF/WAVE or NIST SPHERE header promises (None if unknown).

    libsndfile silently reads what is there when such a file is cut short, so truncation is
    detected by comparing with the header."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return _riff_frames(data)
    if data[:8] == b"NIST_1A\n":
        header = data[: int(data[8:16].strip() or 1024)].decode("ascii", "replace")
        match = re.search(r"sample_count -i (\d+)", header)
        coding = re.search(r"sample_coding -s\d+ (\S+)", header)
        if coding and coding.group(1) != "pcm":
            return None  # shorten-compressed sphere: the count is not checkable from the size
        return int(match.group(1)) if match else None
    return None


def _riff_frames(data: bytes) -> int | None:
    pos, block_align = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(data):
            block_align = struct.unpack("<H", data[pos + 20 : pos + 22])[0]
        if chunk == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None  # streaming writers leave the size unset
            return size // block_align
        pos += 8 + size + (size & 1)
    return None
