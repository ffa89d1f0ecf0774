"""CTC labels: greedy frame labels, CTC forced alignment, and both as time intervals.

A CTC model emits one distribution over tokens per frame (~50 per second); token 0 is usually the
blank. Greedy decoding takes the argmax per frame, then collapses runs of the same token and
drops blanks: [a a _ a b _ b] → "a a b b".

Frame i of a model with receptive field rf and hop h (samples, 16 kHz; 400 and 320 for wav2vec2)
is centred at (h i + rf / 2) / 16000 s (`FrameGeometry.frame_centre_s`). As an interval (`frame_bounds_s`) it covers
[(h i + rf/2 - h/2) / 16000, (h i + rf/2 + h/2) / 16000): one hop around its centre, so frames
tile time without gaps or overlaps (wav2vec2: frame 0 = [2.5 ms, 22.5 ms)), and, since h <= rf,
the last frame ends inside the audio.

Forced alignment is the Viterbi path through the usual CTC graph of the target [y1 .. yL]
extended with blanks, [_ y1 _ y2 _ .. yL _] (2L + 1 states): from state s a frame may stay,
go to s + 1, or skip the blank to s + 2 when y(s+2) != y(s). L targets therefore need at least
L + (number of equal neighbours) frames.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.corpus.records import Segment

BLANK_LABEL = "<blank>"
TIER_GREEDY = "ctc_greedy"  # tier and source of greedy frame labels
SOURCE_FORCED = "ctc_forced"
# Not `char` / `word`: the segments key is (run, utterance_id, tier, idx), and corpora with their own
# word tier (TIMIT, TextGrid, hub word_detail, embedded) would otherwise get two rows per key.
TIER_CHAR = "ctc_char"
TIER_WORD = "ctc_word"
WORD_DELIMITER = "|"  # wav2vec2 CTC vocabularies' word boundary token
WORD_DELIMITERS = (WORD_DELIMITER, " ")


def collapse(frame_ids, blank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy CTC collapse of per-frame token ids.

    Returns (tokens, first_frame): the decoded token ids and, for each, the frame where its run
    starts. Repeats merge unless a blank separates them; blanks are dropped.
    """
    ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        return ids, ids.copy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    keep = starts[ids[starts] != blank]
    return ids[keep], keep


# ---------------------------------------------------------------- frames as intervals


def runs_to_segments(labels: Sequence[str], geometry: FrameGeometry, tier: str, source: str) -> list[Segment]:
    """Per-frame labels → one interval per run of equal labels (frame bounds as `FrameGeometry.frame_bounds_s`)."""
    labels = list(labels)
    if not labels:
        return []
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    stops = starts[1:] + [len(labels)]
    start_s, _ = geometry.frame_bounds_s(starts)
    _, end_s = geometry.frame_bounds_s(np.asarray(stops) - 1)
    return [Segment(tier, idx, labels[a], float(s), float(e), source)
            for idx, (a, s, e) in enumerate(zip(starts, start_s, end_s))]


def token_names(frame_ids, id_to_token: dict[int, str], blank: int) -> list[str]:
    """Token ids → names; the blank is `<blank>` whatever the vocabulary calls it (often `<pad>`)."""
    return [BLANK_LABEL if i == blank else id_to_token.get(int(i), f"<id {int(i)}>") for i in np.asarray(frame_ids)]


def greedy_segments(emissions, id_to_token: dict[int, str], blank: int, geometry: FrameGeometry) -> list[Segment]:
    """Argmax per frame of emissions [T, V] (logits or log-probs), runs merged, tier/source `ctc_greedy`."""
    ids = np.asarray(emissions).argmax(axis=-1)
    return runs_to_segments(token_names(ids, id_to_token, blank), geometry, TIER_GREEDY, TIER_GREEDY)


# ---------------------------------------------------------------- forced alignment


@dataclass(frozen=True)
class ForcedAlignment:
    """The best CTC path of a target sequence.

    `path[t]` is the token id emitted at frame t (blank included); `spans[k] = (first, stop)` are
    the frames [first, stop) where target k is emitted; `log_prob` is the path's summed log-prob.
    """

    path: np.ndarray  # int64 [T]
    spans: np.ndarray  # int64 [L, 2]
    log_prob: float


def min_frames(targets) -> int:
    """Fewest frames a CTC path of `targets` needs: one per token plus a blank between equal neighbours."""
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    return int(t.size + np.count_nonzero(t[1:] == t[:-1]))


def forced_align(log_probs, targets, blank: int = 0, utterance_id: str = "") -> ForcedAlignment:
    """CTC Viterbi forced alignment of `targets` [L] (token ids, no blank) to `log_probs` [T, V].

    Vectorised over the 2L + 1 extended states, one numpy step per frame; backpointers take
    T x (2L + 1) bytes. Ties go to the state reached by the fewest skipped states (stay, then advance
    by one, then by two). Raises ValueError naming the utterance when the targets cannot fit in T
    frames or no path has finite probability.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    tg = np.asarray(targets, dtype=np.int64).reshape(-1)
    name = f"utterance {utterance_id!r}: " if utterance_id else ""
    if lp.ndim != 2:
        raise ValueError(f"{name}log_probs must be [frames, vocabulary], got shape {lp.shape}")
    n_frames, vocab = lp.shape
    if tg.size and (tg.min() < 0 or tg.max() >= vocab or (tg == blank).any()):
        raise ValueError(f"{name}targets must be token ids in [0, {vocab}) other than the blank {blank}, "
                         f"got {tg.tolist()}")
    need = min_frames(tg)
    if need > n_frames:
        raise ValueError(f"{name}{tg.size} target tokens need at least {need} frames "
                         f"({need - tg.size} blanks between repeated tokens), the emissions have {n_frames}; "
                         "the transcript is too long for the audio (or the wrong transcript)")
    ext = np.full(2 * tg.size + 1, blank, dtype=np.int64)
    ext[1::2] = tg
    n_states = ext.size
    # skip s-2 -> s allowed into a token state whose token differs from the one two states back
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[3::2] = tg[1:] != tg[:-1]
    emit = lp[:, ext]  # [T, S]
    score = np.full(n_states, -np.inf)
    score[0] = emit[0, 0]
    if n_states > 1:
        score[1] = emit[0, 1]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    skip_to = np.flatnonzero(can_skip)
    for t in range(1, n_frames):
        prev, score = score, score.copy()  # stay
        step = back[t]
        step[1:] = prev[:-1] > score[1:]  # strictly better only: ties stay, then advance by one
        np.copyto(score[1:], prev[:-1], where=step[1:].astype(bool))
        if skip_to.size:
            from2 = prev[skip_to - 2]
            better = from2 > score[skip_to]
            score[skip_to[better]] = from2[better]
            step[skip_to[better]] = 2
        score += emit[t]
    ends = [n_states - 1] + ([n_states - 2] if n_states > 1 else [])
    last = max(ends, key=lambda s: (score[s], s))  # a tie prefers ending on the trailing blank
    if not np.isfinite(score[last]):
        raise ValueError(f"{name}no CTC path of the {tg.size} target tokens has finite probability "
                         "(a needed token has log-prob -inf on every frame it could take)")
    states = np.empty(n_frames, dtype=np.int64)
    states[-1] = last
    for t in range(n_frames - 1, 0, -1):
        states[t - 1] = states[t] - back[t, states[t]]
    path = ext[states]
    spans = np.zeros((tg.size, 2), dtype=np.int64)
    if not tg.size:
        return ForcedAlignment(path, spans, float(score[last]))
    token_frames = np.flatnonzero(states % 2 == 1)
    k = states[token_frames] // 2
    first = np.r_[True, k[1:] != k[:-1]]
    stop = np.r_[k[1:] != k[:-1], True]
    spans[k[first], 0] = token_frames[first]
    spans[k[stop], 1] = token_frames[stop] + 1
    return ForcedAlignment(path, spans, float(score[last]))


def char_segments(alignment: ForcedAlignment, labels: Sequence[str], geometry: FrameGeometry) -> list[Segment]:
    """One interval per target token (word delimiters included), from its first frame's start to
    its last frame's end; tier `ctc_char`, source `ctc_forced`."""
    if len(labels) != len(alignment.spans):
        raise ValueError(f"{len(labels)} labels for {len(alignment.spans)} aligned tokens")
    start_s, _ = geometry.frame_bounds_s(alignment.spans[:, 0])
    _, end_s = geometry.frame_bounds_s(alignment.spans[:, 1] - 1)
    return [Segment(TIER_CHAR, i, lab, float(s), float(e), SOURCE_FORCED)
            for i, (lab, s, e) in enumerate(zip(labels, start_s, end_s))]


def word_segments(chars: Sequence[Segment], delimiters: Sequence[str] = WORD_DELIMITERS) -> list[Segment]:
    """Runs of characters between delimiters → one interval each, from the first character's start
    to the last one's end; tier `ctc_word`, source `ctc_forced`."""
    words: list[Segment] = []
    current: list[Segment] = []
    for seg in [*chars, None]:
        if seg is not None and seg.label not in delimiters:
            current.append(seg)
            continue
        if current:
            words.append(Segment(TIER_WORD, len(words), "".join(c.label for c in current),
                                 current[0].start_s, current[-1].end_s, SOURCE_FORCED))
            current = []
    return words


def log_softmax(logits) -> np.ndarray:
    """Log-probs over the last axis, computed in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def text_to_tokens(text: str, vocabulary: Sequence[str], delimiter: str | None = "|") -> tuple[list[str], Counter]:
    """A transcript → the model's single-character tokens, and what was dropped (char → count).

    NFC first; whitespace becomes `delimiter` (runs of it one, none at either end); a character
    missing from the vocabulary is tried upper-cased, then lower-cased (`she` → `SHE` for an
    upper-case vocabulary), else dropped (punctuation, digits, other scripts). Multi-character
    tokens (`<pad>`, `<unk>`, `<s>`) never match.
    """
    chars = {t for t in vocabulary if len(t) == 1}
    if delimiter is not None and delimiter not in chars:
        delimiter = None
    out: list[str] = []
    dropped: Counter = Counter()
    for c in unicodedata.normalize("NFC", text):
        if c.isspace():
            token = delimiter
        elif c in chars:
            token = c
        elif c.upper() in chars:
            token = c.upper()
        elif c.lower() in chars:
            token = c.lower()
        else:
            dropped[c] += 1
            continue
        if token is None or (token == delimiter and (not out or out[-1] == delimiter)):
            continue
        out.append(token)
    while out and out[-1] == delimiter:
        out.pop()
    return out, dropped
