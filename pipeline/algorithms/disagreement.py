"""Transcriber disagreement: per frame, how many reference transcripts disagree with the model there.

Two rules, each a pure function of the model's greedy frame labels and the references (normalised
texts, `cer.normalise_text`):

* `gap` (`frame_disagreement`). The greedy frame labels are cut into runs. Every non-blank run is
  one hypothesis character (`|` → space; a boundary at either end or right after another boundary
  is no character and its frames count as blank). The hypothesis is aligned to each reference
  (`cer.align`); reference j disagrees with
    * a character's frames when that character is substituted or absent from reference j;
    * the blank frames between characters k-1 and k (the gap; leading and trailing blanks are gaps
      too) when reference j has material there that the hypothesis lacks (deletions). A gap without
      frames (two characters on adjacent frames) hands it to the next character's frames
      (`empty_gap="next"`, the default; or "previous", or "drop").
  A frame's value is the number of references that disagree with it, each counted once.
* `original` (`frame_disagreement_original` on `multi_align`): the original's `error_category`
  (Grósz et al. 2023), reproduced on all 180,710 shipped frames. docs/transcriber_disagreement.md
  compares the two with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.algorithms.cer import GAP, WORD_BOUNDARY, align, token_char
from pipeline.algorithms.ctc import BLANK_LABEL

RULES = ("gap", "original")
EMPTY_GAP = ("next", "previous", "drop")


@dataclass(frozen=True)
class HypothesisFrames:
    """The model's transcript and where its characters lie: character k is emitted on frames
    spans[k, 0] .. spans[k, 1] - 1; every other frame belongs to the gap between two characters."""

    text: str
    spans: np.ndarray  # int64 [K, 2]
    n_frames: int


def hypothesis_frames(frame_labels: Sequence[str], blank: str = BLANK_LABEL, word_boundary: str = WORD_BOUNDARY,
                      merge_boundaries: bool = True) -> HypothesisFrames:
    """Greedy frame labels → transcript characters with their frame spans (see the module doc).

    Boundaries at either end are dropped; `merge_boundaries=False` keeps a boundary run that follows
    another one (`| _ |` → two spaces), as the original's transcripts do (4 of its 58).
    """
    labels = np.asarray(frame_labels, dtype=object).reshape(-1)
    n = labels.size
    if n == 0:
        return HypothesisFrames("", np.zeros((0, 2), np.int64), 0)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    stops = np.r_[starts[1:], n]
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), stops.tolist()):
        label = str(labels[s])
        if label == blank:
            continue
        char = token_char(label, word_boundary)
        if char == " " and (not chars or (merge_boundaries and chars[-1] == " ")):
            continue  # leading or repeated boundary: no character
        chars.append(char)
        spans.append((s, e))
    if chars and chars[-1] == " ":
        chars.pop()
        spans.pop()
    return HypothesisFrames("".join(chars), np.array(spans, np.int64).reshape(-1, 2), n)


def disagreeing(hypothesis: str, references: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token_bad [J, K], gap_deletions [J, K + 1]): does reference j disagree with character k;
    how many reference characters does it have in gap g (before character g) that the hypothesis lacks."""
    k_chars = len(hypothesis)
    token_bad = np.zeros((len(references), k_chars), bool)
    gap_deletions = np.zeros((len(references), k_chars + 1), np.int64)
    for j, reference in enumerate(references):
        k = 0
        for op in align(hypothesis, reference).ops:
            if op == "D":
                gap_deletions[j, k] += 1
            else:
                token_bad[j, k] = op != "="
                k += 1
    return token_bad, gap_deletions


def frame_slots(hyp: HypothesisFrames) -> np.ndarray:
    """Slot of each frame: 2k + 1 inside character k, 2g in gap g."""
    frames = np.arange(hyp.n_frames)
    k = np.searchsorted(hyp.spans[:, 0], frames, side="right") - 1
    inside = (k >= 0) & (frames < hyp.spans[np.maximum(k, 0), 1]) if len(hyp.spans) else np.zeros(hyp.n_frames, bool)
    return np.where(inside, 2 * k + 1, 2 * (k + 1))


def frame_disagreement(frame_labels: Sequence[str], references: Sequence[str], blank: str = BLANK_LABEL,
                       word_boundary: str = WORD_BOUNDARY, empty_gap: str = "next") -> np.ndarray:
    """Per frame, the number of `references` (normalised texts) that disagree with the model there.

    `frame_labels` are the model's greedy token per frame (`blank` for the CTC blank). The rule is
    the module doc's `gap`; `empty_gap` says where a reference's extra material goes when the gap it
    falls in has no frames: `next` character, `previous` character, or `drop` it. Returns int64 [frames].
    """
    if empty_gap not in EMPTY_GAP:
        raise ValueError(f"empty_gap must be one of {EMPTY_GAP}, got {empty_gap!r}")
    hyp = hypothesis_frames(frame_labels, blank, word_boundary)
    token_bad, gap_deletions = disagreeing(hyp.text, references)
    k_chars = len(hyp.text)
    slot_bad = np.zeros((len(references), 2 * k_chars + 1), bool)
    slot_bad[:, 1::2] = token_bad
    slot_bad[:, 0::2] = gap_deletions > 0
    slots = frame_slots(hyp)
    occupied = np.bincount(slots, minlength=2 * k_chars + 1) > 0
    for g in np.flatnonzero(~occupied[0::2]):
        if k_chars == 0 or empty_gap == "drop":
            continue
        after = 2 * g + 1 if g < k_chars else 2 * g - 1
        before = 2 * g - 1 if g > 0 else 2 * g + 1
        slot_bad[:, after if empty_gap == "next" else before] |= slot_bad[:, 2 * g]
    return slot_bad.sum(axis=0)[slots]


@dataclass(frozen=True)
class MultiAlignment:
    """The original's merge of N pairwise alignments into one row over the hypothesis.

    Columns are hypothesis characters and gap columns (`is_gap`): before each character (and at the
    end), as many gap columns as the most reference characters any reference has there that the
    hypothesis lacks. `counts` per column: at a character, the number of references that do not
    match it; at the i-th gap column of a gap, the number of references with more than i characters
    there (so the first gap column counts every reference with extra material in that gap).
    """

    hypothesis: str
    is_gap: np.ndarray  # bool [columns]
    counts: np.ndarray  # int64 [columns]

    def text(self, gap: str = GAP) -> str:
        chars = iter(self.hypothesis)
        return "".join(gap if g else next(chars) for g in self.is_gap.tolist())


def multi_align(hypothesis: str, references: Sequence[str]) -> MultiAlignment:
    """Merge the hypothesis's alignments to each reference (the original's `transcript_multi_aligned`
    and `char_error_count`, reproduced exactly on its 58 recordings)."""
    token_bad, gap_deletions = disagreeing(hypothesis, references)
    is_gap: list[bool] = []
    counts: list[int] = []
    for g in range(len(hypothesis) + 1):
        extra = gap_deletions[:, g]
        for i in range(int(extra.max(initial=0))):
            is_gap.append(True)
            counts.append(int((extra > i).sum()))
        if g < len(hypothesis):
            is_gap.append(False)
            counts.append(int(token_bad[:, g].sum()))
    return MultiAlignment(hypothesis, np.array(is_gap, bool), np.array(counts, np.int64))


def frame_disagreement_original(frame_labels: Sequence[str], multi: MultiAlignment, blank: str = BLANK_LABEL,
                                word_boundary: str = WORD_BOUNDARY) -> np.ndarray:
    """The original's `error_category` (its code was never published; this reproduces all 180,710
    shipped frames). It walks the frame runs and the multi-alignment's columns together:
      * a blank run standing at gap columns takes the first one's count and skips them all;
      * a non-blank run whose character equals the current column's takes its count and advances;
      * anything else gets 0 and does not advance.
    A gap column with no blank run before the next character stalls the walk: characters get 0
    until a blank run consumes the gap, and from then on the walk lags, giving counts to the first
    later run with the same character, or to none. That, not the references, makes most
    differences from `frame_disagreement` (docs/transcriber_disagreement.md).
    """
    labels = np.asarray(frame_labels, dtype=object).reshape(-1)
    out = np.zeros(labels.size, np.int64)
    if labels.size == 0:
        return out
    columns = multi.text(gap="\0")
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    stops = np.r_[starts[1:], labels.size]
    p = 0
    for s, e in zip(starts.tolist(), stops.tolist()):
        if p >= len(columns):
            break
        label = str(labels[s])
        if label == blank:
            if multi.is_gap[p]:
                out[s:e] = multi.counts[p]
                while p < len(columns) and multi.is_gap[p]:
                    p += 1
        elif token_char(label, word_boundary) == columns[p]:
            out[s:e] = multi.counts[p]
            p += 1
    return out


def utterance_disagreement(frame_labels: Sequence[str], references: Sequence[str], rule: str = "gap",
                           empty_gap: str = "next", blank: str = BLANK_LABEL,
                           word_boundary: str = WORD_BOUNDARY) -> np.ndarray:
    """`frame_disagreement` (rule `gap`) or the original's (rule `original`) for one utterance."""
    if rule == "gap":
        return frame_disagreement(frame_labels, references, blank, word_boundary, empty_gap)
    if rule == "original":
        hyp = hypothesis_frames(frame_labels, blank, word_boundary, merge_boundaries=False)
        return frame_disagreement_original(frame_labels, multi_align(hyp.text, references), blank, word_boundary)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
