"""CTC greedy labels, forced alignment and their intervals, against planted paths and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.algorithms import ctc
from pipeline.algorithms.geometry import FrameGeometry

GEO = FrameGeometry(400, 320)


def planted(path: list[int], vocab: int, p: float = 0.9) -> np.ndarray:
    """Log-probs where `path[t]` has probability p at frame t and the rest share 1 - p."""
    lp = np.full((len(path), vocab), np.log((1 - p) / (vocab - 1)))
    lp[np.arange(len(path)), path] = np.log(p)
    return lp


def brute_force(lp: np.ndarray, targets: list[int], blank: int = 0) -> tuple[float, list[tuple[int, ...]]]:
    """Best summed log-prob over every frame sequence that collapses to `targets`, and the argmax paths."""
    best, paths = -np.inf, []
    n_frames, vocab = lp.shape
    for seq in itertools.product(range(vocab), repeat=n_frames):
        if ctc.collapse(seq, blank)[0].tolist() != list(targets):
            continue
        score = float(lp[np.arange(n_frames), seq].sum())
        if score > best + 1e-12:
            best, paths = score, [seq]
        elif abs(score - best) <= 1e-12:
            paths.append(seq)
    return best, paths


def test_collapse_keeps_repeats_split_by_blank():
    tokens, first = ctc.collapse([1, 1, 0, 1, 2, 0, 2, 2])
    assert tokens.tolist() == [1, 1, 2, 2] and first.tolist() == [0, 3, 4, 6]


def test_forced_alignment_recovers_a_planted_path_with_repeats():
    # "a a b": the repeated a needs a blank between its two runs
    path = [0, 1, 1, 0, 1, 2, 2, 0]
    result = ctc.forced_align(planted(path, 3), [1, 1, 2])
    assert result.path.tolist() == path
    assert result.spans.tolist() == [[1, 3], [4, 5], [5, 7]]
    assert result.log_prob == pytest.approx(8 * np.log(0.9))


def test_forced_alignment_fixes_what_greedy_gets_wrong():
    # every frame prefers `a` over `b`: greedy reads "a", the transcript "a b" still fits best as a | b | _
    lp = np.log(np.array([[0.05, 0.55, 0.40], [0.05, 0.55, 0.40], [0.90, 0.05, 0.05]]))
    assert ctc.collapse(lp.argmax(1))[0].tolist() == [1]
    result = ctc.forced_align(lp, [1, 2])
    assert result.path.tolist() == [1, 2, 0]
    assert result.spans.tolist() == [[0, 1], [1, 2]]
    best, paths = brute_force(lp, [1, 2])
    assert result.log_prob == pytest.approx(best) and tuple(result.path) in paths


def test_impossible_transcripts_name_the_utterance():
    lp = planted([0, 1], 3)
    with pytest.raises(ValueError, match=r"'spk1/utt7'.*2 target tokens need at least 3 frames"):
        ctc.forced_align(lp, [1, 1], utterance_id="spk1/utt7")
    with pytest.raises(ValueError, match=r"'u'.*3 target tokens need at least 3 frames.*have 2"):
        ctc.forced_align(lp, [1, 2, 1], utterance_id="u")
    assert ctc.forced_align(lp, [1, 2]).path.tolist() == [1, 2]  # exactly as many frames as tokens
    with pytest.raises(ValueError, match="other than the blank"):
        ctc.forced_align(lp, [0, 1])
    with pytest.raises(ValueError, match="other than the blank"):
        ctc.forced_align(lp, [3])
    with np.errstate(divide="ignore"):
        impossible = np.log(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # `b` can never be emitted
        with pytest.raises(ValueError, match=r"'x'.*finite probability"):
            ctc.forced_align(impossible, [2], utterance_id="x")


def test_empty_transcript_is_all_blank():
    result = ctc.forced_align(planted([1, 2, 0], 3), [])
    assert result.path.tolist() == [0, 0, 0] and result.spans.shape == (0, 2)


def test_min_frames():
    assert ctc.min_frames([]) == 0
    assert ctc.min_frames([1, 2, 3]) == 3
    assert ctc.min_frames([1, 1, 2, 2, 2]) == 8


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 3), max_size=4), st.integers(0, 2**32 - 1))
def test_forced_alignment_equals_brute_force(n_frames, targets, seed):
    lp = ctc.log_softmax(np.random.default_rng(seed).normal(size=(n_frames, 4)) * 3)
    if ctc.min_frames(targets) > n_frames:
        with pytest.raises(ValueError, match="need at least"):
            ctc.forced_align(lp, targets)
        return
    best, paths = brute_force(lp, targets)
    result = ctc.forced_align(lp, targets)
    assert result.log_prob == pytest.approx(best, abs=1e-9)
    assert tuple(result.path.tolist()) in paths
    assert ctc.collapse(result.path)[0].tolist() == targets
    # spans: ordered, non-empty, and exactly the frames where each target token is emitted
    for k, (a, b) in enumerate(result.spans):
        assert a < b and (result.path[a:b] == targets[k]).all()
        if k:
            assert result.spans[k - 1][1] <= a


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(0, 400))
def test_frame_intervals_hold_their_centres_and_end_inside_the_audio(rf, hop, extra):
    if hop > rf:
        hop, rf = rf, hop
    geo = FrameGeometry(rf, hop)
    n_samples = rf + extra * hop // 7
    n = geo.n_frames(n_samples)
    frames = np.arange(n)
    start, end = geo.frame_bounds_s(frames)
    centres = geo.frame_centres_s(frames)
    assert ((start <= centres) & (centres < end)).all()
    assert np.allclose(end[:-1], start[1:], rtol=0, atol=1e-12)  # frames tile time
    assert start[0] >= 0 and end[-1] <= n_samples / geo.sample_rate_hz + 1e-12
    assert list(geo.frames_for_interval(start[n // 2], end[n // 2], n)) == [n // 2]


def test_wav2vec2_frame_bounds():
    start, end = GEO.frame_bounds_s([0, 1])
    assert start.tolist() == [40 / 16000, 360 / 16000] and end.tolist() == [360 / 16000, 680 / 16000]


def test_greedy_segments_merge_runs_and_name_the_blank():
    vocab = {0: "<pad>", 1: "A", 2: "B"}
    lp = planted([0, 0, 1, 1, 1, 0, 2, 2], 3)
    segs = ctc.greedy_segments(lp, vocab, blank=0, geometry=GEO)
    assert [s.label for s in segs] == ["<blank>", "A", "<blank>", "B"]
    assert [s.idx for s in segs] == [0, 1, 2, 3]
    assert {s.tier for s in segs} == {s.source for s in segs} == {"ctc_greedy"}
    bounds = [(s.start_s, s.end_s) for s in segs]
    assert bounds[0] == (40 / 16000, 680 / 16000) and bounds[-1] == (1960 / 16000, 2600 / 16000)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    # every frame's centre lies in the segment of its own label
    for t, token in enumerate(lp.argmax(1)):
        c = GEO.frame_centre_s(t)
        (seg,) = [s for s in segs if s.start_s <= c < s.end_s]
        assert seg.label == ctc.token_names([token], vocab, 0)[0]


def test_char_and_word_segments():
    # tokens: 1=H 2=I 3=| ; transcript "HI | H" with a blank run between the words
    path = [0, 1, 1, 2, 0, 3, 0, 0, 1, 0]
    result = ctc.forced_align(planted(path, 4), [1, 2, 3, 1])
    assert result.path.tolist() == path
    chars = ctc.char_segments(result, ["H", "I", "|", "H"], GEO)
    assert [(c.label, c.tier, c.source) for c in chars] == [
        ("H", "ctc_char", "ctc_forced"), ("I", "ctc_char", "ctc_forced"), ("|", "ctc_char", "ctc_forced"),
        ("H", "ctc_char", "ctc_forced")]
    start, end = GEO.frame_bounds_s(np.arange(len(path)))
    assert (chars[0].start_s, chars[0].end_s) == (start[1], end[2])
    assert (chars[3].start_s, chars[3].end_s) == (start[8], end[8])
    words = ctc.word_segments(chars)
    assert [(w.idx, w.label, w.start_s, w.end_s, w.tier) for w in words] == [
        (0, "HI", start[1], end[3], "ctc_word"), (1, "H", start[8], end[8], "ctc_word")]
    with pytest.raises(ValueError, match="3 labels for 4"):
        ctc.char_segments(result, ["H", "I", "|"], GEO)


def test_text_to_tokens_normalises_to_the_vocabulary():
    vocab = ["<pad>", "<unk>", "|", "A", "B", "'", "É"]
    tokens, dropped = ctc.text_to_tokens("  ab, a'b.  É é\tb 7 ", vocab)
    assert "".join(tokens) == "AB|A'B|É|É|B"
    assert dropped == {",": 1, ".": 1, "7": 1}
    assert ctc.text_to_tokens("a b", ["a", "b"], delimiter="|")[0] == ["a", "b"]  # no delimiter: spaces go
    assert ctc.text_to_tokens("ab", ["<pad>"])[0] == []
    assert ctc.text_to_tokens("e\u0301", vocab)[0] == ["É"]  # NFC: e + combining acute is é


def test_log_softmax_is_normalised():
    lp = ctc.log_softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
    assert np.allclose(np.exp(lp).sum(1), 1.0) and np.isfinite(lp[0, :2]).all()
