"""Stage: transcripts from frames → tables `decoded` and `frame_disagreement`.

Two of the original's analyses (Grósz et al. 2023) on a run's frames; the algorithms are pure
functions in `pipeline.algorithms.cer` (decoding, alignment, CER) and
`pipeline.algorithms.disagreement` (the rules `gap` and `original`); this stage reads, writes and
commits.

1. Cluster decoding: every chosen clustering's frames are mapped to their cluster's majority
   greedy CTC label, CTC-collapsed and scored against the model's own greedy transcript (CER).
2. Transcriber disagreement: per frame, how many reference transcripts disagree with the model
   there (`--rule gap`, or the original's `--rule original`).

CLI (flags = the fields of `TranscriptsConfig`):
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
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.algorithms.cer import (decode_clusters, edit_distance, error_rate, greedy_transcript, majority_labels,
                                     normalise_text)
from pipeline.algorithms.ctc import BLANK_LABEL, TIER_GREEDY  # noqa: F401 - BLANK_LABEL re-exported for callers
from pipeline.algorithms.disagreement import EMPTY_GAP, RULES, utterance_disagreement
from pipeline.warehouse import Warehouse, fingerprint, keys
from pipeline.warehouse.schemas import DECODED, FRAME_DISAGREEMENT, check_tier_name

log = logging.getLogger(__name__)

GREEDY_TIER = TIER_GREEDY  # segments tier of greedy CTC frame labels (what `labels` writes)

# the tables' schemas (pipeline.warehouse.schemas): decoded_table's rows are DECODED's but the clustering's tier,
# which the stage adds
DECODED_SCHEMA = DECODED.remove(DECODED.get_field_index("tier"))
FRAME_DISAGREEMENT_SCHEMA = FRAME_DISAGREEMENT

# the queries, in sql/ (one per file)
GREEDY_LABELS_SQL = "tier_segments"
CLUSTERS_SQL = "clusters_of"
CLUSTERINGS_SQL = "clusterings"
UTTERANCES_SQL = "utterance_texts"


@dataclass
class TranscriptsConfig:
    """The parameters of `transcripts`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str
    warehouse: str = "storage"
    layers: str = field(default="all", metadata={"help": "layers whose clusterings are decoded: 'all' or a comma list"})
    k: int | None = field(default=None, metadata={"help": "only this k (default: every k clustered)"})
    tier: str | None = field(default=None, metadata={
        "help": "decode the clusterings trained for this tier only (default: every tier)"})
    references: str = field(default="text", metadata={
        "help": "comma list of reference transcripts: 'text' (utterances.text) or utterance metadata keys"})
    rule: str = field(default="gap", metadata={
        "choices": ("gap", "original"),
        "help": "disagreement rule: ours (gap), or the original study's error_category (original)"})
    empty_gap: str = field(default="next", metadata={
        "choices": ("next", "previous", "drop"),
        "help": "where reference text between characters on adjacent frames is counted"})


def greedy_frame_labels(rows: pa.Table, hop_s: float) -> dict[str, np.ndarray]:
    """`segments` rows of tier ctc_greedy (one per run of equal labels, in order, frame 0 first)
    → per utterance, the label of every frame. A run spans round((end_s - start_s) / hop_s) frames."""
    out: dict[str, list] = {}
    columns = (rows[c].to_pylist() for c in ("utterance_id", "label", "start_s", "end_s"))
    for utt, label, start, end in zip(*columns):
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
                     "n_reference_chars": len(ref), "cer": error_rate(n_edits, len(ref))})
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
    con = wh.connect(runs=[cfg.run])
    rows = query(wh.root, GREEDY_LABELS_SQL, {"run": cfg.run, "tier": GREEDY_TIER}, con=con)
    if rows.num_rows == 0:
        raise ValueError(f"run {cfg.run!r} has no `{GREEDY_TIER}` segments: extract it with a CTC model first")
    labels = greedy_frame_labels(rows, geometry["hop_samples"] / geometry["sample_rate_hz"])
    written = {"decoded": 0, "frame_disagreement": 0}
    n_decoded = 0  # clusterings
    for clustering in query(wh.root, CLUSTERINGS_SQL, {"run": cfg.run}, con=con).to_pylist():
        layer, k, tier = clustering["layer"], clustering["k"], clustering["tier"]
        if ((cfg.layers != "all" and str(layer) not in cfg.layers.split(",")) or (cfg.k is not None and k != cfg.k)
                or (cfg.tier is not None and tier != cfg.tier)):
            continue
        t0 = time.perf_counter()
        table = decoded_table(labels, query(wh.root, CLUSTERS_SQL, {"run": cfg.run, "layer": layer, "k": k,
                                                                   "tier": tier}, con=con))
        table = table.append_column(DECODED.field("tier"), pa.array([tier] * table.num_rows, pa.string()))
        record = wh.write("decoded", table, cfg.run, 0, file_prefix=tier, layer=layer, k=k)
        wh.commit(cfg.run, keys.decoded_stage(k, tier), keys.layer_shard(layer), [record],
                  params_sha256=fingerprint(cfg.__dict__), tier=tier, seconds=time.perf_counter() - t0)
        written["decoded"] += table.num_rows
        log.info("layer %s k %s tier %s: corpus CER %.4f", layer, k, tier,
                 error_rate(sum(table["n_edits"].to_pylist()), sum(table["n_reference_chars"].to_pylist())))
        n_decoded += 1
    if not n_decoded:
        log.warning("run %s: no clustering (layers %s, k %s, tier %s) to decode; `decoded` is not written (run "
                    "`python -m pipeline analyze` first)", cfg.run, cfg.layers, cfg.k or "any", cfg.tier or "any")
    names = [n.strip() for n in cfg.references.split(",") if n.strip()]
    references = reference_texts(query(wh.root, UTTERANCES_SQL, {"run": cfg.run}, con=con), names)
    t0 = time.perf_counter()
    table = disagreement_table(labels, references, cfg.rule, cfg.empty_gap)
    record = wh.write("frame_disagreement", table, cfg.run, 0, rule=cfg.rule)
    wh.commit(cfg.run, keys.disagreement_stage(cfg.rule), 0, [record], params_sha256=fingerprint(cfg.__dict__),
              seconds=time.perf_counter() - t0)
    written["frame_disagreement"] = table.num_rows
    return written


@dataclass
class TranscriptsResult:
    written: dict[str, int]  # rows written per table

    def summary(self) -> str:
        return "transcripts: " + ", ".join(f"{n} rows of {t}" for t, n in self.written.items())


def run(cfg: TranscriptsConfig) -> TranscriptsResult:
    return TranscriptsResult(transcripts(cfg))
