"""Transcripts from frames: character error rate, cluster → label decoding, transcriber disagreement.

Three of the original's analyses (Grósz et al. 2023), each a pure function on per-frame arrays plus a
warehouse stage:

1. `align` / `cer`: character alignment and error rate with edlib, the original's aligner (its 232
   shipped ASR-vs-transcriber alignments are edlib's global (NW) paths, reproduced exactly).
2. `decode_clusters`: map each frame's cluster to its cluster's majority label, CTC-collapse, score
   the text against the model's own transcript. `off_by_one_mapping` + `decode_original` are the
   original's `eval_pre_clusters_asr.py`, bug included (its 58 transcripts reproduced exactly).
3. `frame_disagreement`: per frame, how many reference transcripts disagree with the model there
   (rule below). `frame_disagreement_original` is the original's `error_category` (reproduced on
   all 180,710 frames). docs/transcriber_disagreement.md compares the two with numbers.

The disagreement rule (`rule="gap"`). The model's greedy frame labels are cut into runs. Every
non-blank run is one hypothesis character (`|` → space; a boundary at either end or right after
another boundary is no character and its frames count as blank). The hypothesis is aligned to each
reference; reference j disagrees with
  * a character's frames when that character is substituted or absent from reference j;
  * the blank frames between characters k-1 and k (the gap; leading and trailing blanks are gaps
    too) when reference j has material there that the hypothesis lacks (deletions). A gap without
    frames (two characters on adjacent frames) hands it to the next character's frames
    (`empty_gap="next"`, the default; or "previous", or "drop").
A frame's value is the number of references that disagree with it, each counted once.

CLI (proposed; pipeline/cli.py wires it):
    python -m pipeline transcripts --run R [--layers all|-1,0,6-12] [--k K] [--tier T] [--references text,...]
        [--rule gap|original] [--empty-gap next|previous|drop] [--warehouse DIR]
Greedy frame labels come from `segments` (tier `ctc_greedy`), clusters from `clusters` (every
clustering: each layer, k and the tier its k-means was trained for, or only `--tier`); references
are `utterances.text` (`text`) or keys of `utterances.metadata`, normalised by `normalise_text`.

Tables (Hive partitions after `run`):
    decoded/run/layer/k/<tier>-00000              utterance_id, hypothesis, reference, n_edits,
                                                  n_reference_chars, cer, tier (of the clustering)
    frame_disagreement/run/rule/part-00000        utterance_id, frame, n_disagree, n_references
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import edlib
import numpy as np
import pyarrow as pa

from pipeline.algorithms.ctc import collapse
from pipeline.algorithms.metrics import majority_mapping
from pipeline.warehouse.schemas import check_tier_name, tiered_views
from pipeline.warehouse import Warehouse, fingerprint

log = logging.getLogger(__name__)

BLANK_LABEL = "<blank>"  # the frames' name of the CTC blank (as pipeline.algorithms.ctc writes it)
WORD_BOUNDARY = "|"
GREEDY_TIER = "ctc_greedy"  # segments tier of greedy CTC frame labels (pipeline.algorithms.ctc)
UNKNOWN_CHAR = "\ufffd"  # stands for a multi-character token (<unk>, <s>) in a hypothesis
GAP = "-"  # the original's gap symbol in aligned strings
RULES = ("gap", "original")
EMPTY_GAP = ("next", "previous", "drop")

DECODED_SCHEMA = pa.schema([
    ("utterance_id", pa.string()),
    ("hypothesis", pa.string()),  # the clusters decoded through the majority mapping
    ("reference", pa.string()),  # the model's own greedy transcript
    ("n_edits", pa.int64()),
    ("n_reference_chars", pa.int64()),
    ("cer", pa.float64()),  # n_edits / n_reference_chars; NaN for an empty reference
])
FRAME_DISAGREEMENT_SCHEMA = pa.schema([
    ("utterance_id", pa.string()),
    ("frame", pa.int32()),
    ("n_disagree", pa.int8()),
    ("n_references", pa.int8()),
])

# ---------------------------------------------------------------- text


def normalise_text(text: str) -> str:
    """Lower case (NFC), every run of characters other than letters and apostrophes → one space, stripped.

    The original's normal form of its references (lower case, letters and spaces), keeping `'`.
    """
    text = unicodedata.normalize("NFC", text).lower()
    return " ".join(re.sub(r"[^\w']|[\d_]", " ", text).split())


def _token_char(token: str, word_boundary: str) -> str:
    if token == word_boundary:
        return " "
    return token.lower() if len(token) == 1 else UNKNOWN_CHAR


def tokens_to_text(tokens: Iterable[str], word_boundary: str = WORD_BOUNDARY) -> str:
    """Decoded CTC tokens → text: boundary → space, lower case, whitespace runs → one, stripped."""
    return " ".join("".join(_token_char(str(t), word_boundary) for t in tokens).split())


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
        return _rate(self.n_edits, len(self.reference))

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


def _rate(n_edits: int, n_reference: int) -> float:
    if n_reference == 0:
        return 0.0 if n_edits == 0 else float("nan")
    return n_edits / n_reference


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate: edit distance / reference length (0 for two empty texts, NaN for an
    empty reference against a non-empty hypothesis)."""
    return _rate(edit_distance(hypothesis, reference), len(reference))


def corpus_cer(pairs: Iterable[tuple[str, str]]) -> float:
    """CER of a corpus of (hypothesis, reference) pairs: total edits / total reference characters."""
    edits = chars = 0
    for hyp, ref in pairs:
        edits += edit_distance(hyp, ref)
        chars += len(ref)
    return _rate(edits, chars)


# ---------------------------------------------------------------- cluster → label decoding


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


# ---------------------------------------------------------------- transcriber disagreement


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
        char = _token_char(label, word_boundary)
        if char == " " and (not chars or (merge_boundaries and chars[-1] == " ")):
            continue  # leading or repeated boundary: no character
        chars.append(char)
        spans.append((s, e))
    if chars and chars[-1] == " ":
        chars.pop()
        spans.pop()
    return HypothesisFrames("".join(chars), np.array(spans, np.int64).reshape(-1, 2), n)


def _disagreeing(hypothesis: str, references: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
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


def _frame_slots(hyp: HypothesisFrames) -> np.ndarray:
    """Slot of each frame: 2k + 1 inside character k, 2g in gap g."""
    frames = np.arange(hyp.n_frames)
    k = np.searchsorted(hyp.spans[:, 0], frames, side="right") - 1
    inside = (k >= 0) & (frames < hyp.spans[np.maximum(k, 0), 1]) if len(hyp.spans) else np.zeros(hyp.n_frames, bool)
    return np.where(inside, 2 * k + 1, 2 * (k + 1))


def frame_disagreement(frame_labels: Sequence[str], references: Sequence[str], blank: str = BLANK_LABEL,
                       word_boundary: str = WORD_BOUNDARY, empty_gap: str = "next") -> np.ndarray:
    """Per frame, the number of `references` (normalised texts) that disagree with the model there.

    `frame_labels` are the model's greedy token per frame (`blank` for the CTC blank). The rule is
    the module doc's; `empty_gap` says where a reference's extra material goes when the gap it falls
    in has no frames: `next` character, `previous` character, or `drop` it. Returns int64 [frames].
    """
    if empty_gap not in EMPTY_GAP:
        raise ValueError(f"empty_gap must be one of {EMPTY_GAP}, got {empty_gap!r}")
    hyp = hypothesis_frames(frame_labels, blank, word_boundary)
    token_bad, gap_deletions = _disagreeing(hyp.text, references)
    k_chars = len(hyp.text)
    slot_bad = np.zeros((len(references), 2 * k_chars + 1), bool)
    slot_bad[:, 1::2] = token_bad
    slot_bad[:, 0::2] = gap_deletions > 0
    slots = _frame_slots(hyp)
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
    token_bad, gap_deletions = _disagreeing(hypothesis, references)
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
        elif _token_char(label, word_boundary) == columns[p]:
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


# ---------------------------------------------------------------- warehouse stage

# the queries, in sql/ (one per file)
GREEDY_LABELS_SQL = "tier_segments"
CLUSTERS_SQL = "clusters_of"
CLUSTERINGS_SQL = "clusterings"
UTTERANCES_SQL = "utterance_texts"


@dataclass
class TranscriptsConfig:
    """The parameters of `transcripts`; the CLI's flags are these names."""

    run: str
    warehouse: str = "storage"
    layers: str = "all"  # layers with clusters to decode: 'all' or a comma list
    k: int | None = None  # None: every k clustered
    tier: str | None = None  # only the clusterings trained for this tier; None: every tier clustered
    references: str = "text"  # comma list: `text` (utterances.text) or utterances.metadata keys
    rule: str = "gap"
    empty_gap: str = "next"


def greedy_frame_labels(rows: pa.Table, hop_s: float) -> dict[str, np.ndarray]:
    """`segments` rows of tier ctc_greedy (one per run of equal labels, in order, frame 0 first)
    → per utterance, the label of every frame. A run spans round((end_s - start_s) / hop_s) frames."""
    out: dict[str, list] = {}
    for utt, label, start, end in zip(*(rows.column(c).to_pylist() for c in ("utterance_id", "label", "start_s", "end_s"))):
        out.setdefault(utt, []).extend([label] * int(round((end - start) / hop_s)))
    return {utt: np.array(labels, dtype=object) for utt, labels in out.items()}


def decoded_table(labels: Mapping[str, np.ndarray], clusters: pa.Table) -> pa.Table:
    """One clustering (columns utterance_id, frame, cluster, sorted) → DECODED_SCHEMA rows.

    The mapping is the majority label of each cluster over every frame of the clustering.
    """
    utt = clusters.column("utterance_id").to_numpy(zero_copy_only=False)
    frame = clusters.column("frame").to_numpy()
    cluster = clusters.column("cluster").to_numpy()
    frame_labels = np.empty(len(utt), dtype=object)
    bounds = np.flatnonzero(np.r_[True, utt[1:] != utt[:-1], True]) if len(utt) else np.array([0])
    for a, b in zip(bounds[:-1], bounds[1:]):
        own = labels.get(utt[a])
        if own is None or frame[b - 1] >= len(own):
            raise ValueError(f"utterance {utt[a]!r}: clusters reach frame {frame[b - 1]} but the greedy labels "
                             f"cover {0 if own is None else len(own)} frames; extract the CTC labels of this run first")
        frame_labels[a:b] = own[frame[a:b]]
    mapping = majority_labels(frame_labels.astype(str), cluster) if len(utt) else {}
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        hyp = decode_clusters(cluster[a:b], mapping)
        ref = greedy_transcript(labels[utt[a]])
        n_edits = edit_distance(hyp, ref)
        rows.append({"utterance_id": utt[a], "hypothesis": hyp, "reference": ref, "n_edits": n_edits,
                     "n_reference_chars": len(ref), "cer": _rate(n_edits, len(ref))})
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def disagreement_table(labels: Mapping[str, np.ndarray], references: Mapping[str, Sequence[str]], rule: str = "gap",
                       empty_gap: str = "next") -> pa.Table:
    """Per utterance with both greedy labels and references → FRAME_DISAGREEMENT_SCHEMA rows."""
    parts = []
    for utt in sorted(labels.keys() & references.keys()):
        refs = [normalise_text(r) for r in references[utt]]
        n = utterance_disagreement(labels[utt], refs, rule, empty_gap)
        parts.append(pa.table({"utterance_id": pa.array([utt] * len(n), pa.string()),
                               "frame": pa.array(np.arange(len(n)), pa.int32()),
                               "n_disagree": pa.array(n, pa.int8()),
                               "n_references": pa.array(np.full(len(n), len(refs)), pa.int8())},
                              schema=FRAME_DISAGREEMENT_SCHEMA))
    return pa.concat_tables(parts) if parts else FRAME_DISAGREEMENT_SCHEMA.empty_table()


def reference_texts(rows: pa.Table, names: Sequence[str]) -> dict[str, list[str]]:
    """utterances rows → per utterance its references `names` (`text` or metadata keys); an
    utterance missing any of them is left out (and logged)."""
    out = {}
    for utt, text, metadata in zip(*(rows.column(c).to_pylist() for c in ("utterance_id", "text", "metadata"))):
        meta = dict(metadata or [])
        refs = [text if name == "text" else meta.get(name) for name in names]
        if any(r is None for r in refs):
            log.info("utterance %s lacks reference(s) %s: skipped", utt, [n for n, r in zip(names, refs) if r is None])
            continue
        out[utt] = refs
    return out


def transcripts(cfg: TranscriptsConfig) -> dict[str, int]:
    """Write `decoded` for every chosen clustering of a run and `frame_disagreement` for its references.
    Returns rows written per table."""
    from pipeline.sql import query

    if cfg.rule not in RULES or cfg.empty_gap not in EMPTY_GAP:
        raise ValueError(f"--rule must be one of {RULES} and --empty-gap one of {EMPTY_GAP}, "
                         f"got {cfg.rule!r} and {cfg.empty_gap!r}")
    if cfg.tier is not None:
        check_tier_name(cfg.tier)
    wh = Warehouse(cfg.warehouse)
    facts = wh.read_facts(cfg.run) or {}
    geometry = facts.get("geometry")
    if not geometry:
        raise ValueError(f"run {cfg.run!r} in {cfg.warehouse} records no frame geometry: run `extract` first")
    con = wh.connect()
    tiered_views(con)
    rows = query(wh.root, GREEDY_LABELS_SQL, {"run": cfg.run, "tier": GREEDY_TIER}, con=con)
    if rows.num_rows == 0:
        raise ValueError(f"run {cfg.run!r} has no `{GREEDY_TIER}` segments: extract it with a CTC model first")
    labels = greedy_frame_labels(rows, geometry["hop_samples"] / geometry["sample_rate_hz"])
    written = {"decoded": 0, "frame_disagreement": 0}
    for clustering in query(wh.root, CLUSTERINGS_SQL, {"run": cfg.run}, con=con).to_pylist():
        layer, k, tier = clustering["layer"], clustering["k"], clustering["tier"]
        if ((cfg.layers != "all" and str(layer) not in cfg.layers.split(",")) or (cfg.k is not None and k != cfg.k)
                or (cfg.tier is not None and tier != cfg.tier)):
            continue
        t0 = time.perf_counter()
        table = decoded_table(labels, query(wh.root, CLUSTERS_SQL, {"run": cfg.run, "layer": layer, "k": k,
                                                                   "tier": tier}, con=con))
        table = table.append_column(pa.field("tier", pa.string()), pa.array([tier] * table.num_rows, pa.string()))
        record = wh.write("decoded", table, cfg.run, 0, file_prefix=tier, layer=layer, k=k)
        # phone keeps the stage name of the commits made before tiers, so that this one supersedes them
        stage = f"transcripts.decoded.k{k}" + ("" if tier == "phone" else f".{tier}")
        wh.commit(cfg.run, stage, layer, [record], params=fingerprint(cfg.__dict__), tier=tier,
                  seconds=time.perf_counter() - t0)
        written["decoded"] += table.num_rows
        log.info("layer %s k %s tier %s: corpus CER %.4f", layer, k, tier,
                 _rate(sum(table.column("n_edits").to_pylist()), sum(table.column("n_reference_chars").to_pylist())))
    names = [n.strip() for n in cfg.references.split(",") if n.strip()]
    references = reference_texts(query(wh.root, UTTERANCES_SQL, {"run": cfg.run}, con=con), names)
    t0 = time.perf_counter()
    table = disagreement_table(labels, references, cfg.rule, cfg.empty_gap)
    record = wh.write("frame_disagreement", table, cfg.run, 0, rule=cfg.rule)
    wh.commit(cfg.run, f"transcripts.disagreement.{cfg.rule}", 0, [record], params=fingerprint(cfg.__dict__),
              seconds=time.perf_counter() - t0)
    written["frame_disagreement"] = table.num_rows
    return written
