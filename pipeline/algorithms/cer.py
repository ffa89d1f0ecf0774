"""Transcripts as text and their character error rate: normal form, decoding frames to text, alignment, CER.

* `align` / `cer`: character alignment and error rate with edlib, the original's aligner (its 232
  shipped ASR-vs-transcriber alignments are edlib's global (NW) paths, reproduced exactly).
* `decode_clusters`: map each frame's cluster to its cluster's majority label (`majority_labels`),
  CTC-collapse, give text; scored against the model's own transcript (`greedy_transcript`).
  `off_by_one_mapping` + `decode_original` are the original's `eval_pre_clusters_asr.py`, bug
  included (its 58 transcripts reproduced exactly).

Pure: per-frame arrays and strings in, text and numbers out (the `transcripts` stage does the I/O).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import edlib
import numpy as np

from pipeline.algorithms.ctc import BLANK_LABEL, WORD_DELIMITER, collapse
from pipeline.algorithms.metrics import majority_mapping

WORD_BOUNDARY = WORD_DELIMITER  # the CTC word delimiter, a space in text
UNKNOWN_CHAR = "\ufffd"  # stands for a multi-character token (<unk>, <s>) in a hypothesis
GAP = "-"  # the original's gap symbol in aligned strings

# ---------------------------------------------------------------- text


def normalise_text(text: str) -> str:
    """Lower case (NFC), every run of characters other than letters and apostrophes → one space, stripped.

    The original's normal form of its references (lower case, letters and spaces), keeping `'`.
    """
    text = unicodedata.normalize("NFC", text).lower()
    return " ".join(re.sub(r"[^\w']|[\d_]", " ", text).split())


def token_char(token: str, word_boundary: str = WORD_BOUNDARY) -> str:
    """One CTC token as one transcript character: boundary → space, a letter → lower case, a longer
    token (`<unk>`) → UNKNOWN_CHAR."""
    if token == word_boundary:
        return " "
    return token.lower() if len(token) == 1 else UNKNOWN_CHAR


def tokens_to_text(tokens: Iterable[str], word_boundary: str = WORD_BOUNDARY) -> str:
    """Decoded CTC tokens → text: boundary → space, lower case, whitespace runs → one, stripped."""
    return " ".join("".join(token_char(str(t), word_boundary) for t in tokens).split())


# ---------------------------------------------------------------- alignment and CER


@dataclass(frozen=True)
class Alignment:
    """A global character alignment of a hypothesis to a reference.

    `ops` has one letter per column: `=` match, `S` substitution, `I` insertion (a hypothesis
    character the reference lacks), `D` deletion (a reference character the hypothesis lacks).
    """

    hypothesis: str
    reference: str
    ops: str

    @property
    def n_matches(self) -> int:
        return self.ops.count("=")

    @property
    def n_substitutions(self) -> int:
        return self.ops.count("S")

    @property
    def n_insertions(self) -> int:
        return self.ops.count("I")

    @property
    def n_deletions(self) -> int:
        return self.ops.count("D")

    @property
    def n_edits(self) -> int:
        return len(self.ops) - self.n_matches

    @property
    def cer(self) -> float:
        return error_rate(self.n_edits, len(self.reference))

    def nice(self, gap: str = GAP) -> tuple[str, str, str]:
        """(hypothesis, matches, reference) as edlib's getNiceAlignment prints them: `gap` in the
        strings, `|` match, `.` substitution, `-` insertion or deletion."""
        hyp, mid, ref = [], [], []
        h = r = 0
        for op in self.ops:
            hyp.append(gap if op == "D" else self.hypothesis[h])
            ref.append(gap if op == "I" else self.reference[r])
            mid.append({"=": "|", "S": ".", "I": "-", "D": "-"}[op])
            h += op != "D"
            r += op != "I"
        return "".join(hyp), "".join(mid), "".join(ref)


_CIGAR = re.compile(r"(\d+)([=XID])")


def align(hypothesis: str, reference: str) -> Alignment:
    """Minimum-edit global alignment (edlib, NW mode; its tie-breaking, as the original)."""
    if not hypothesis or not reference:
        return Alignment(hypothesis, reference, "I" * len(hypothesis) + "D" * len(reference))
    cigar = edlib.align(hypothesis, reference, mode="NW", task="path")["cigar"]
    ops = "".join(("S" if op == "X" else op) * int(n) for n, op in _CIGAR.findall(cigar))
    return Alignment(hypothesis, reference, ops)


def edit_distance(hypothesis: Sequence, reference: Sequence) -> int:
    """Levenshtein distance (unit costs) between two strings, or two token lists such as phone
    sequences (edlib compares any hashable elements, up to 256 distinct ones)."""
    if not hypothesis or not reference:
        return len(hypothesis) + len(reference)
    return int(edlib.align(hypothesis, reference, mode="NW", task="distance")["editDistance"])


def error_rate(n_edits: int, n_reference: int) -> float:
    """n_edits / n_reference: 0 for no edits of an empty reference, NaN for edits of an empty one."""
    if n_reference == 0:
        return 0.0 if n_edits == 0 else float("nan")
    return n_edits / n_reference


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate: edit distance / reference length (0 for two empty texts, NaN for an
    empty reference against a non-empty hypothesis)."""
    return error_rate(edit_distance(hypothesis, reference), len(reference))


def corpus_cer(pairs: Iterable[tuple[str, str]]) -> float:
    """CER of a corpus of (hypothesis, reference) pairs: total edits / total reference characters."""
    edits = chars = 0
    for hyp, ref in pairs:
        edits += edit_distance(hyp, ref)
        chars += len(ref)
    return error_rate(edits, chars)


# ---------------------------------------------------------------- frames → text


def majority_labels(labels, clusters, exclude: Sequence = (), fallback=BLANK_LABEL) -> dict:
    """cluster → its most frequent label over the given frames (`metrics.majority_mapping`).

    `exclude` leaves frames with those labels out of the vote (`exclude=(BLANK_LABEL,)` is what the
    original meant by `argmax(distr[1:])`); a cluster left with no frames maps to `fallback`.
    """
    labels = np.asarray(labels).reshape(-1)
    clusters = np.asarray(clusters).reshape(-1)
    keep = ~np.isin(labels, list(exclude)) if len(exclude) else np.ones(labels.size, bool)
    mapping = {m.cluster: m.label for m in majority_mapping(labels[keep], clusters[keep])} if keep.any() else {}
    return {c: mapping.get(c, fallback) for c in np.unique(clusters).tolist()}


def collapse_labels(frame_labels, blank: str = BLANK_LABEL) -> np.ndarray:
    """Per-frame token names → the CTC-decoded tokens (repeats merged, blanks dropped; `ctc.collapse`)."""
    labels = np.asarray(frame_labels, dtype=object).reshape(-1).astype(str)
    if labels.size == 0:
        return labels
    values, codes = np.unique(labels, return_inverse=True)
    blank_code = int(np.searchsorted(values, blank)) if blank in values else -1
    tokens, _ = collapse(codes.reshape(-1), blank=blank_code)
    return values[tokens]


def greedy_transcript(frame_labels, blank: str = BLANK_LABEL, word_boundary: str = WORD_BOUNDARY) -> str:
    """The model's own transcript from its greedy frame labels."""
    return tokens_to_text(collapse_labels(frame_labels, blank), word_boundary)


def decode_clusters(clusters, mapping: Mapping, blank: str = BLANK_LABEL,
                    word_boundary: str = WORD_BOUNDARY) -> str:
    """Per-frame cluster ids → label per frame (`mapping`) → CTC collapse → text (`tokens_to_text`).

    A cluster missing from `mapping` is an error naming it.
    """
    clusters = np.asarray(clusters).reshape(-1)
    values, codes = np.unique(clusters, return_inverse=True)
    missing = [v for v in values.tolist() if v not in mapping]
    if missing:
        raise ValueError(f"clusters {missing[:10]} have no label in the mapping ({len(mapping)} clusters mapped)")
    names = np.array([mapping[v] for v in values.tolist()], dtype=object)
    return greedy_transcript(names[codes.reshape(-1)], blank, word_boundary)


def off_by_one_mapping(label_ids, clusters, blank: int = 0) -> dict[int, int]:
    """The original's cluster → label mapping in eval_pre_clusters_asr.py, bug included.

    Per cluster, `distr` counts each label id; the mapping is `argmax(distr[1:])` without adding
    the 1 back: the id one below the cluster's most frequent non-blank label (a cluster of mostly
    `E` (5) is decoded as `|` (4), one of mostly `|` as `<unk>` (3)). Reproduces
    `pre_kmeans_decoded_transcript` for all 58 recordings with `decode_original`.
    """
    label_ids = np.asarray(label_ids, dtype=np.int64).reshape(-1)
    clusters = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if blank != 0:
        raise ValueError("the original's mapping slices off label id 0 as the blank; blank must be 0")
    n_labels = int(label_ids.max()) + 1
    distr = np.zeros((int(clusters.max()) + 1, n_labels), np.int64)
    np.add.at(distr, (clusters, label_ids), 1)
    return {int(c): int(np.argmax(distr[c, 1:])) for c in np.flatnonzero(distr.sum(axis=1))}


def decode_original(frame_ids, id_to_token: Mapping[int, str], word_boundary: str = WORD_BOUNDARY) -> str:
    """The original's decoding of mapped frames: special tokens (`<…>`, the blank among them) and
    the word boundary are dropped *before* repeats merge, so `E | E` gives `e` and the text has no
    spaces; lower case. (What a tokenizer's decode(skip_special_tokens=True) does when it counts
    `|` as special.)"""
    tokens = [id_to_token[int(i)] for i in np.asarray(frame_ids).reshape(-1)]
    kept = [t for t in tokens if t != word_boundary and not (t.startswith("<") and t.endswith(">"))]
    merged = [t for i, t in enumerate(kept) if i == 0 or t != kept[i - 1]]
    return "".join(merged).lower()
