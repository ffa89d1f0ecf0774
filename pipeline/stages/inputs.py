"""What a stage reads must be in the warehouse: a run's extracted frames, its layers, a label tier.

One check and one message each, for every stage that reads frames (analyze, reduce, compare,
report) and every one that takes a `--tier` (analyze, report).
"""

from __future__ import annotations

from typing import Sequence

from pipeline.sql import query
from pipeline.warehouse import Warehouse
from pipeline.warehouse.schemas import FRAME_TIERS, check_tier_name


def extracted_facts(wh: Warehouse, run: str) -> dict:
    """The facts of `run`, which must have extracted frames; else a ValueError naming the runs there."""
    facts = wh.read_facts(run)
    if not facts or not facts.get("layers"):
        raise ValueError(f"run {run!r} has no extracted frames in {wh.root} (runs there: {wh.runs()}); "
                         "run `python -m pipeline extract` first")
    return facts


def chosen_layers(facts: dict, run: str, layers: str = "all") -> list[int]:
    """The layers `layers` names ('all', '-1,6,12', '8-12', 'mel' or -2 for the log-mel layer) among those extracted for `run` (`facts`:
    from extracted_facts); a layer that was not extracted is an error."""
    from pipeline.model import parse_layers  # loads torch

    if layers == "all":
        return list(facts["layers"])
    from pipeline.algorithms.logmel import MEL_LAYER

    parts = [p.strip() for p in str(layers).split(",") if p.strip()]
    mel = [MEL_LAYER] if any(p.lower() in ("mel", str(MEL_LAYER)) for p in parts) else []  # the log-mel layer
    rest = [p for p in parts if p.lower() not in ("mel", str(MEL_LAYER))]
    wanted = sorted(mel + (parse_layers(",".join(rest), facts.get("model", {}).get("num_layers", max(facts["layers"])))
                           if rest else []))
    missing = sorted(set(wanted) - set(facts["layers"]))
    if missing:
        raise ValueError(f"layers {missing} were not extracted for run {run!r} (it has {facts['layers']})")
    return wanted


def require_tier(wh: Warehouse, runs: Sequence[str], tier: str, con=None) -> None:
    """A tier other than the frames' phone and word columns must be a `segments` tier of every run and,
    when `labels` made it, complete (`pipeline.stages.labels.check_tier_complete`)."""
    from pipeline.stages.labels import check_tier_complete  # loads the corpus readers

    check_tier_name(tier)
    if tier in FRAME_TIERS:
        return
    found = query(None, "report_tiers", {"runs": ",".join(runs)}, con=con or wh.connect()).to_pylist()
    have = {(r["run"], r["tier"]) for r in found}
    lacking = [run for run in runs if (run, tier) not in have]
    if lacking:
        offered = sorted({r["tier"] for r in found} | set(FRAME_TIERS))
        raise ValueError(f"run(s) {lacking} have no tier {tier!r}: use one of {offered} (CTC tiers come from "
                         "`python -m pipeline labels`)")
    for run in runs:
        check_tier_complete(wh, run, tier)
