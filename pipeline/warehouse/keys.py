"""Commit stage keys: the one place that writes a stage's name into a commit record and reads it back.

A commit record (`Warehouse.commit`) is keyed by (run, stage, shard). The stage says which command
wrote it and with which key parameters; `shard` is the corpus shard for the corpus stages and the
layer for the per-layer ones (`layer_shard`, `shard_layer`: call sites say `layer`):

    ingest, extract                          shard: corpus shard
    labels.<name>                            shard: corpus shard (name: ctc_greedy, ctc_forced or --tier-name)
    analyze.k<k>.<tier>                      shard: layer (clusters, centroids, metrics, cluster_labels)
    analyze.k<k>.<tier>.by.<attribute>       shard: layer (group_metrics)
    reduce.<method>                          shard: layer
    compare.<other run>                      shard: 0
    transcripts.decoded.k<k>[.<tier>]        shard: layer (no suffix for phone: the name from before tiers)
    transcripts.disagreement.<rule>          shard: 0
    metadata.<file name>.<path hash>         shard: 0 (before files were keyed by path: metadata.<file name>)

These names are on disk (`_commits/run=<run>/<stage>/<shard>.<generation>.json`; before commit objects,
`_commits/run=<run>/<stage>.rank<r>.jsonl`), and resume and every reader look them up, so they never
change. A stage name never holds '/'. A commit records the hash of its parameters as `params_sha256`;
older ones called it `params` (analyze, transcripts) or `fingerprint` (reduce, compare), which
`params_sha256(record)` reads too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INGEST = "ingest"
EXTRACT = "extract"
LABELS = "labels"
ANALYZE = "analyze"
REDUCE = "reduce"
COMPARE = "compare"
TRANSCRIPTS = "transcripts"
METADATA = "metadata"
KINDS = (INGEST, EXTRACT, LABELS, ANALYZE, REDUCE, COMPARE, TRANSCRIPTS, METADATA)
CORPUS_STAGES = (EXTRACT, INGEST)  # their shards are the corpus shards every later stage follows

_ANALYZE = re.compile(r"analyze\.k(\d+)\.(.+?)(?:\.by\.(.+))?")  # the tier ends at the first ".by."
_DECODED = re.compile(r"transcripts\.decoded\.k(\d+)(?:\.(.+))?")
DECODED_DEFAULT_TIER = "phone"


def kind(stage: str) -> str:
    """The command that wrote a stage: what comes before the first dot (`analyze.k50.phone` → analyze)."""
    return stage.split(".", 1)[0]


def _rest(stage: str, prefix: str) -> str | None:
    head = prefix + "."
    return stage[len(head):] if stage.startswith(head) and len(stage) > len(head) else None


# ---------------------------------------------------------------- the shard of a per-layer stage
def layer_shard(layer: int) -> int:
    """The commit `shard` of a per-layer stage (analyze, reduce, transcripts.decoded): the layer itself."""
    return int(layer)


def shard_layer(shard: int) -> int:
    """The layer a per-layer stage's commit `shard` holds (see layer_shard)."""
    return int(shard)


# ---------------------------------------------------------------- one pair of functions per stage kind
def labels_stage(name: str) -> str:
    return f"{LABELS}.{name}"


def parse_labels(stage: str) -> str | None:
    """The name of a `labels` stage (its segments files' prefix), None for another stage."""
    return _rest(stage, LABELS)


@dataclass(frozen=True)
class AnalyzeKey:
    k: int
    tier: str
    by: str | None = None  # the utterance attribute of a group_metrics commit


def analyze_stage(k: int, tier: str, by: str | None = None) -> str:
    return f"{ANALYZE}.k{int(k)}.{tier}" + ("" if by is None else f".by.{by}")


def parse_analyze(stage: str) -> AnalyzeKey | None:
    m = _ANALYZE.fullmatch(stage)
    return AnalyzeKey(int(m.group(1)), m.group(2), m.group(3)) if m else None


def reduce_stage(method: str) -> str:
    return f"{REDUCE}.{method}"


def parse_reduce(stage: str) -> str | None:
    """The method of a `reduce` stage, None for another stage."""
    return _rest(stage, REDUCE)


def compare_stage(other: str) -> str:
    return f"{COMPARE}.{other}"


def parse_compare(stage: str) -> str | None:
    """The other run of a `compare` stage (committed under the first run), None for another stage."""
    return _rest(stage, COMPARE)


@dataclass(frozen=True)
class DecodedKey:
    k: int
    tier: str


def decoded_stage(k: int, tier: str) -> str:
    return f"{TRANSCRIPTS}.decoded.k{int(k)}" + ("" if tier == DECODED_DEFAULT_TIER else f".{tier}")


def parse_decoded(stage: str) -> DecodedKey | None:
    m = _DECODED.fullmatch(stage)
    return DecodedKey(int(m.group(1)), m.group(2) or DECODED_DEFAULT_TIER) if m else None


def disagreement_stage(rule: str) -> str:
    return f"{TRANSCRIPTS}.disagreement.{rule}"


def parse_disagreement(stage: str) -> str | None:
    """The rule of a `transcripts` disagreement stage, None for another stage."""
    return _rest(stage, f"{TRANSCRIPTS}.disagreement")


def metadata_stage(name: str, tag: str) -> str:
    """`name`: the attribute file's name (letters, digits, '_'); `tag`: a hash of its resolved path."""
    return f"{METADATA}.{name}.{tag}"


def parse_metadata(stage: str) -> tuple[str, str | None] | None:
    """(file name, path tag) of a `metadata` stage (tag None for the old, untagged names), None for another.
    File names are written with letters, digits and '_' only, so the first dot ends them."""
    rest = _rest(stage, METADATA)
    if rest is None:
        return None
    name, _, tag = rest.partition(".")
    return name, tag or None


# ---------------------------------------------------------------- the parameters' hash
def params_sha256(record: dict) -> str | None:
    """The hash of a commit's parameters, whichever name its writer gave it (see the module docstring)."""
    for name in ("params_sha256", "fingerprint", "params"):
        value = record.get(name)
        if isinstance(value, str):
            return value
    return None
