"""Alignment formats → checked `Segment` lists.

Every format is first read into raw intervals `(start_s, end_s, label)` per tier; `clean_tier`
then repairs what can be repaired losslessly and raises `Quarantine` for the rest:

- repaired: unsorted intervals (sorted by start), ends at most 10 ms past the audio (clipped);
- quarantined: overlaps, intervals further past the end, end <= start, empty labels where the
  format needs one.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from pipeline.algorithms.phone_classes import SILENCE
from pipeline.corpus.audio import regular_file
from pipeline.corpus.records import Quarantine, Segment

Interval = tuple[float, float, str]

END_TOLERANCE_S = 0.010  # an interval may end this far past the audio; it is clipped
OVERLAP_TOLERANCE_S = 1e-6  # float noise in TextGrid times


def read_text(path: Path) -> str:
    """A text file of the corpus, read only if it is a regular file (a fifo would block the stream)."""
    regular_file(path)
    return path.read_text(errors="replace")


def read_timit_intervals(path: Path, sample_rate_hz: int) -> list[Interval]:
    """A TIMIT `.PHN` / `.WRD` file: `start end label` per line, in samples of the audio."""
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 3:
            raise Quarantine(
                "alignment_empty_label",
                f"{path.name} line {lineno}: expected 'start end label', found {line.strip()!r}",
            )
        try:
            start, end = int(fields[0]), int(fields[1])
        except ValueError:
            raise Quarantine(
                "alignment_bad_interval", f"{path.name} line {lineno}: sample positions are not integers: {line!r}"
            ) from None
        out.append((start / sample_rate_hz, end / sample_rate_hz, " ".join(fields[2:])))
    return out


# tier names of MFA (`phones`, `words`; with several speakers `<speaker> - phones`) and of other
# aligners' singular forms → the project's tiers
TIER_NAMES = {"phones": "phone", "phone": "phone", "words": "word", "word": "word"}


def tier_name(name: str) -> str:
    """`phones` / `words` (any case, with or without MFA's `<speaker> - ` prefix) → `phone` / `word`;
    any other tier keeps its name."""
    return TIER_NAMES.get(name.rpartition(" - ")[2].strip().lower(), name)


def read_textgrid(path: Path) -> dict[str, list[Interval]]:
    """A Praat TextGrid (long or short format; MFA output). Empty labels (MFA's silence between
    words) become `sil`; MFA's `sil`, `sp` (short pause) and `spn` (spoken noise, the phone of an
    out-of-vocabulary `<unk>` word) and ARPAbet stress digits (`AH0`) are kept as written.

    Tier names `phones`/`words` (MFA) become `phone`/`word` (`tier_name`); other tiers keep their name."""
    from praatio import textgrid  # praatio: the reader MFA itself uses

    regular_file(path)
    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=True, duplicateNamesMode="rename")
    except Exception as err:  # praatio raises many types for malformed files
        raise Quarantine("alignment_bad_interval", f"{path.name}: not a readable TextGrid: {err}") from None
    tiers: dict[str, list[Interval]] = {}
    for name in grid.tierNames:
        tier = grid.getTier(name)
        if tier.tierType != textgrid.INTERVAL_TIER:
            continue
        tiers[tier_name(name)] = [(float(s), float(e), (lab.strip() or SILENCE)) for s, e, lab in tier.entries]
    return tiers


def read_detail_column(detail: dict | None, sample_rate_hz: int, name: str = "") -> list[Interval] | None:
    """timit_asr-style `{start: [...], stop: [...], utterance: [...]}` in samples.

    A position that is null, not a number or not finite is `alignment_bad_interval`, named."""
    if not detail:
        return None
    starts, stops, labels = detail.get("start"), detail.get("stop"), detail.get("utterance")
    if starts is None or stops is None or labels is None:
        return None
    if not (len(starts) == len(stops) == len(labels)):
        raise Quarantine(
            "alignment_bad_interval",
            f"{name or 'detail column'}: lists differ in length: start {len(starts)}, stop {len(stops)}, "
            f"utterance {len(labels)}",
        )
    for key, values in (("start", starts), ("stop", stops)):
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise Quarantine("alignment_bad_interval",
                                 f"{name or 'detail column'}: {key}[{i}] is {value!r}, not a sample position")
    return [(s / sample_rate_hz, e / sample_rate_hz, lab) for s, e, lab in zip(starts, stops, labels)]


def clean_tier(
    intervals: list[Interval], duration_s: float, tier: str, source: str, name: str = ""
) -> list[Segment]:
    """Sort, check and clip one tier; raise Quarantine for what cannot be repaired."""
    where = f"{name} tier {tier!r}"
    for start, end, label in intervals:
        if label is None or not str(label).strip():
            raise Quarantine("alignment_empty_label", f"{where}: interval [{start:.4f}, {end:.4f}) has no label")
        if start < 0 or end <= start:
            raise Quarantine("alignment_bad_interval", f"{where}: interval [{start}, {end}) {label!r}")
    ordered = sorted(intervals, key=lambda iv: (iv[0], iv[1]))
    for (s0, e0, l0), (s1, e1, l1) in zip(ordered, ordered[1:]):
        if s1 < e0 - OVERLAP_TOLERANCE_S:
            raise Quarantine(
                "alignment_overlap",
                f"{where}: {l0!r} [{s0:.4f}, {e0:.4f}) overlaps {l1!r} [{s1:.4f}, {e1:.4f})",
            )
    if ordered and ordered[-1][1] > duration_s + END_TOLERANCE_S:
        s, e, lab = ordered[-1]
        raise Quarantine(
            "alignment_out_of_range",
            f"{where}: {lab!r} ends at {e:.4f} s, the audio at {duration_s:.4f} s "
            f"(more than {END_TOLERANCE_S * 1000:.0f} ms past)",
        )
    segments = []
    for idx, (start, end, label) in enumerate(ordered):
        end = min(end, duration_s)
        start = min(start, end)
        if end <= start:  # started inside the tolerated overhang: nothing of it lies in the audio
            raise Quarantine(
                "alignment_out_of_range", f"{where}: {label!r} starts at {start:.4f} s, at or past the audio end"
            )
        segments.append(Segment(tier, idx, str(label).strip(), float(start), float(end), source))
    return segments
