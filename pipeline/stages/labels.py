"""Stage: CTC labels of a run's utterances as segment tiers (greedy frame labels or forced alignment).

    python -m pipeline labels --run NAME --model CTC_ID_OR_PATH [--source greedy|forced] [--warehouse DIR] [--device auto|cpu|cuda]

Reopens the corpus the run was made from (the source spec in `_runs/<run>.json`), decodes each
shard the run committed, runs a `…ForCTC` checkpoint on every kept utterance (one at a time, so no
padding; recordings over 30 s in windows with 2 s of context) and writes `segments` rows:

- `--source greedy`: tier and source `ctc_greedy`, the argmax token of every frame, runs of one
  token merged, the blank named `<blank>`;
- `--source forced`: the utterance's `text`, normalised to the model's vocabulary, CTC-Viterbi
  aligned: tier `ctc_char` (one interval per token, word delimiter `|` included) and `ctc_word`,
  source `ctc_forced`. An utterance whose transcript is missing, empty after normalisation or too
  long for its frames gets no rows; the shard's commit record lists it with the reason.

`--tier-name NAME` writes tier NAME (greedy) or NAME_char and NAME_word (forced) instead.

Frame t is the interval of one hop around its centre (`pipeline.algorithms.ctc.frame_bounds_s`); the model's
frame geometry must equal the run's. Files are `segments/run=<run>/<name>-<shard>.parquet`, committed
per shard under stage `labels.<name>` (name: `ctc_greedy`, `ctc_forced` or the tier name), each
record naming its tiers and what made them (`maker`: model id, weights fingerprint, source,
windows). A tier belongs to one maker: a rerun with the same one labels only the shards not yet
committed; one with another model or parameters is refused, naming both, unless it writes a new
tier (`tier_name`) or replaces the tier (`overwrite_tier`: every old shard is first superseded by
an empty commit, so a killed overwrite leaves only the new maker's shards). The corpus's own tiers
are never written.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.algorithms import ctc
from pipeline.warehouse import keys, schemas
from pipeline.algorithms.geometry import FrameGeometry
from pipeline.stages.ingest import (CorpusChanged, Prepared, corpus_changed, corpus_fingerprint, iter_shards,
                                    prepare_shard)
from pipeline.corpus.records import Segment
from pipeline.corpus.sources import SourceSpec
from pipeline.warehouse import Warehouse, fingerprint

log = logging.getLogger(__name__)

SOURCES = {"greedy": ctc.TIER_GREEDY, "forced": ctc.SOURCE_FORCED}
# commits written before tiers were recorded in them: the tiers their stage wrote
LEGACY_TIERS = {keys.labels_stage(ctc.TIER_GREEDY): [ctc.TIER_GREEDY],
                keys.labels_stage(ctc.SOURCE_FORCED): [ctc.TIER_CHAR, ctc.TIER_WORD]}
MAX_CHUNK_S = 30.0  # longer recordings run in windows (attention memory grows with the square of frames)
CONTEXT_S = 2.0


class TierConflict(ValueError):
    """A tier exists, made by another model or with other parameters: writing into it would mix two makers."""


@dataclass
class CtcModel:
    """A `…ForCTC` model in eval mode with its vocabulary and the facts a labels commit records."""

    model: Any
    geometry: FrameGeometry
    do_normalize: bool
    blank: int
    id_to_token: dict[int, str]
    delimiter: str | None  # word delimiter token (`|`), None when the vocabulary has none
    model_id: str
    revision: str
    config_fingerprint: str
    device: Any

    def facts(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "revision": self.revision, "config_fingerprint": self.config_fingerprint,
                "blank": self.blank, "do_normalize": self.do_normalize, **self.geometry.as_dict()}


@dataclass
class LabelCounts:
    shards: int = 0
    skipped_shards: int = 0
    utterances: int = 0
    segments: int = 0
    unlabelled: dict[str, str] = field(default_factory=dict)  # utterance → why it has no rows
    dropped: Counter = field(default_factory=Counter)  # transcript characters outside the vocabulary
    wall_s: float = 0.0

    def summary(self) -> str:
        dropped = ", ".join(f"{c!r}×{n}" for c, n in self.dropped.most_common(20)) or "none"
        return (f"done: {self.segments} segments for {self.utterances} utterances in {self.shards} shards "
                f"({self.skipped_shards} already committed), {len(self.unlabelled)} without labels; "
                f"characters dropped from transcripts: {dropped}; {self.wall_s:.1f} s")


def load_ctc_model(id_or_path: str | os.PathLike, device: str = "auto",
                   cache_dir: str | os.PathLike | None = None) -> CtcModel:
    """A wav2vec2-family `…ForCTC` checkpoint with its tokenizer; never `trust_remote_code`.
    Named models resolve as in `load_model` (pipeline/model/registry.py): `default-ctc` is the demo
    model that `python -m pipeline demo-models` trains into `cache_dir`."""
    from transformers import AutoModelForCTC, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pipeline import model as M

    hf_logging.disable_progress_bar()
    model_id = str(id_or_path)
    id_or_path = M.resolve_model(id_or_path, cache_dir)
    config = M.load_config(id_or_path, model_id)
    M.check_model_type(model_id, config)
    if getattr(config, "add_adapter", False):
        raise ValueError(f"{model_id}: the CTC head reads an adapter's output (add_adapter), whose frames are not "
                         "the conv encoder's; its labels would not line up with the run's frames")
    try:
        tokenizer = AutoTokenizer.from_pretrained(id_or_path, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{model_id}: no CTC tokenizer (vocab.json) next to the model ({err}); labels needs a "
                         "fine-tuned CTC checkpoint such as facebook/wav2vec2-base-960h") from None
    model, info = AutoModelForCTC.from_pretrained(id_or_path, config=config, trust_remote_code=False,
                                                  output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "lm_head" in k]
    if missing:
        raise ValueError(f"{model_id}: the checkpoint has no CTC head ({', '.join(sorted(missing))} missing); "
                         "transformers would initialise it at random. Use a fine-tuned CTC checkpoint")
    M.refuse_missing_weights(model_id, id_or_path, model, info.get("missing_keys", []))
    dev = M.resolve_device(device)
    model.float().eval().requires_grad_(False).to(dev)
    do_normalize, _, rate_hz = M.feature_extractor_facts(id_or_path, config)
    M.check_sample_rate(model_id, rate_hz)
    blank = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
    id_to_token = {int(i): tok for tok, i in tokenizer.get_vocab().items()}
    return CtcModel(model=model, geometry=FrameGeometry.from_config(config, rate_hz), do_normalize=do_normalize,
                    blank=int(blank if blank is not None else 0), id_to_token=id_to_token,
                    delimiter=getattr(tokenizer, "word_delimiter_token", None), model_id=model_id,
                    revision=M.revision(id_or_path), config_fingerprint=M.config_fingerprint(config), device=dev)


def log_probs(cm: CtcModel, wave: np.ndarray, max_chunk_s: float | None = MAX_CHUNK_S,
              context_s: float = CONTEXT_S) -> np.ndarray:
    """Log-probs [n_frames, V] (float32) of one 16 kHz waveform: the model's own forward, alone.

    Normalised over the whole utterance first (when the model wants it); a waveform over
    `max_chunk_s` runs in windows with `context_s` each side, central frames kept (an
    approximation: attention and group-norm statistics see only the window).
    """
    import torch

    from pipeline import model as M

    n_frames = cm.geometry.n_frames(len(wave))
    w = M.normalize_waveform(wave) if cm.do_normalize else np.ascontiguousarray(wave, dtype=np.float32)
    out = np.empty((n_frames, cm.model.config.vocab_size), np.float32)
    for win in M.chunk_windows(len(w), cm.geometry, max_chunk_s, context_s):
        x = torch.from_numpy(w[win.start_sample:win.start_sample + win.n_samples])[None].to(cm.device)
        with torch.inference_mode():
            logits = cm.model(x).logits[0].float()
        if logits.shape[0] != cm.geometry.n_frames(win.n_samples):
            raise RuntimeError(f"{cm.model_id}: {logits.shape[0]} logit frames for {win.n_samples} samples, the conv "
                               f"geometry gives {cm.geometry.n_frames(win.n_samples)}")
        rows = slice(win.first_frame + win.keep_start, win.first_frame + win.keep_stop)
        out[rows] = torch.log_softmax(logits, dim=-1)[win.keep_start:win.keep_stop].cpu().numpy()
    return out


def forced_segments(cm: CtcModel, lp: np.ndarray, text: str | None, utterance_id: str) -> tuple[list[Segment], Counter]:
    """`ctc_char` and `ctc_word` intervals of a transcript; ValueError naming the utterance when it cannot align."""
    if not text:
        raise ValueError(f"utterance {utterance_id!r}: no transcript to align")
    # tokens the head can emit (tokenizers add `<s>`, `</s>` past the head's size), blank excluded
    vocab = {i: tok for i, tok in cm.id_to_token.items() if i < lp.shape[1] and i != cm.blank}
    tokens, dropped = ctc.text_to_tokens(text, list(vocab.values()), cm.delimiter)
    if not tokens:
        raise ValueError(f"utterance {utterance_id!r}: no character of {text!r} is in the model's vocabulary")
    token_to_id = {tok: i for i, tok in sorted(vocab.items(), reverse=True)}  # lowest id wins
    alignment = ctc.forced_align(lp, [token_to_id[t] for t in tokens], cm.blank, utterance_id)
    chars = ctc.char_segments(alignment, tokens, cm.geometry)
    return chars + ctc.word_segments(chars, [cm.delimiter] if cm.delimiter else ()), dropped


def tier_names(source: str, tier_name: str | None = None) -> dict[str, str]:
    """The tiers one labels call writes: {tier as pipeline.algorithms.ctc names it: tier written}."""
    if source == "greedy":
        names = {ctc.TIER_GREEDY: tier_name or ctc.TIER_GREEDY}
    elif tier_name is None:
        names = {ctc.TIER_CHAR: ctc.TIER_CHAR, ctc.TIER_WORD: ctc.TIER_WORD}
    else:
        names = {ctc.TIER_CHAR: f"{tier_name}_char", ctc.TIER_WORD: f"{tier_name}_word"}
    for name in names.values():
        schemas.check_tier_name(name)
    return names


def _maker_text(maker: dict) -> str:
    return (f"model {maker.get('model_id')!r} (weights {maker.get('weights')}), --source {maker.get('source')}, "
            f"windows {maker.get('max_chunk_s')} s + {maker.get('context_s')} s context")


def tier_makers(records: dict) -> dict[str, dict[tuple[str, str], dict]]:
    """tier → {(stage, params_sha256): {"maker": …, "shards": [...]}} over a run's labels commits (`records`:
    `Warehouse.commits(run)`). One entry per tier when all is well; more means a mixed tier (made before
    makers were checked)."""
    out: dict[str, dict[tuple[str, str], dict]] = {}
    for (_, stage, shard), rec in sorted(records.items()):
        name = keys.parse_labels(stage)
        if name is None or rec.get("superseded_by_overwrite"):
            continue
        model = rec.get("model") or {}
        maker = rec.get("maker") or {"model_id": model.get("model_id"), "weights": model.get("revision"),
                                     "source": "greedy" if name == ctc.TIER_GREEDY else "forced"}
        for tier in rec.get("tiers") or LEGACY_TIERS.get(stage, []):
            entry = out.setdefault(tier, {}).setdefault((stage, keys.params_sha256(rec)),
                                                        {"maker": maker, "shards": []})
            entry["shards"].append(shard)
    return out


def check_tier_complete(wh: Warehouse, run: str, tier: str) -> None:
    """A CTC tier must label every shard of its run with one maker: a killed `labels` leaves shards without
    labels, whose frames would silently count as unlabelled. Tiers not written by `labels` pass."""
    records = wh.commits(run)
    makers = tier_makers(records).get(tier)
    if not makers:
        return
    if len(makers) > 1:
        made = "; ".join(f"{_maker_text(e['maker'])}: shards {sorted(e['shards'])}" for e in makers.values())
        raise TierConflict(f"run {run!r}: tier {tier!r} mixes labels of {len(makers)} makers ({made}); rerun "
                           f"`python -m pipeline labels --run {run} --model MODEL --overwrite-tier` to remake it")
    (entry,) = makers.values()
    missing = sorted({shard for (_, stage, shard) in records if stage in keys.CORPUS_STAGES} - set(entry["shards"]))
    if missing:
        raise ValueError(f"run {run!r}: tier {tier!r} has no labels for shard(s) {missing} (a `labels` run that "
                         f"was stopped?): finish it with `python -m pipeline labels --run {run} --model "
                         f"{entry['maker'].get('model_id')} --source {entry['maker'].get('source')}` and the same "
                         "options (only the missing shards are labelled)")


def _corpus_tiers(wh: Warehouse, records: dict) -> set[str]:
    """The run's tiers from the corpus: the frames' columns and the segments that ingest/extract wrote."""
    tiers = set(schemas.FRAME_TIERS)
    for (_, stage, _), rec in records.items():
        if stage in keys.CORPUS_STAGES:
            for f in rec["files"]:
                if f["path"].startswith("segments/"):
                    tiers.update(wh.read_table(f["path"], columns=["tier"])["tier"].unique().to_pylist())
    return tiers


def claim_tiers(wh: Warehouse, run: str, stage: str, tiers: list[str], params_sha: str, maker: dict,
                overwrite: bool) -> None:
    """Refuse to write `tiers` under `stage` where another maker (or stage) made them, unless `overwrite`:
    then every shard of the stages in the way is superseded by an empty commit first."""
    records = wh.commits(run)
    taken = sorted(set(tiers) & _corpus_tiers(wh, records))
    if taken:
        raise TierConflict(f"run {run!r}: tier(s) {taken} come from the corpus, never from `labels`; choose "
                           "another name with --tier-name")
    made = tier_makers(records)
    in_the_way: dict[str, list[tuple[str, dict]]] = {}
    for tier, entries in made.items():
        for (old_stage, old_sha), entry in entries.items():
            if (tier in tiers or old_stage == stage) and (old_stage, old_sha) != (stage, params_sha):
                in_the_way.setdefault(old_stage, []).append((tier, entry))
    if not in_the_way:
        return
    if not overwrite:
        tier, entry = next(iter(in_the_way.values()))[0]
        total = len({shard for (_, st, shard) in records if st in keys.CORPUS_STAGES})
        raise TierConflict(
            f"run {run!r}: tier {tier!r} was made by {_maker_text(entry['maker'])} ({len(set(entry['shards']))} of "
            f"{total} shards, stage {next(iter(in_the_way))}); this call would write it with {_maker_text(maker)}. "
            "One tier never mixes two models or settings: write a new tier with --tier-name NEW, or replace this "
            "one with --overwrite-tier")
    for old_stage in in_the_way:
        shards = sorted(shard for (_, st, shard) in records if st == old_stage)
        log.warning("run %s: replacing stage %s (%d shards, tiers %s) with %s", run, old_stage, len(shards),
                    sorted({t for t, _ in in_the_way[old_stage]}), _maker_text(maker))
        for shard in shards:
            wh.commit(run, old_stage, shard, [], superseded_by_overwrite=True, maker=maker)


def labels(run: str, model: str, warehouse: str = "storage", source: str = "greedy", device: str = "auto",
           max_chunk_s: float | None = MAX_CHUNK_S, context_s: float = CONTEXT_S, tier_name: str | None = None,
           overwrite_tier: bool = False) -> LabelCounts:
    """Write CTC label tiers for every kept utterance of `run` into its `segments` table.

    tier_name: write this tier (forced: NAME_char, NAME_word) instead of ctc_greedy (ctc_char, ctc_word).
    overwrite_tier: replace the tier even if another model or other parameters made it.
    """
    started = time.perf_counter()
    if source not in SOURCES:
        raise ValueError(f"--source must be one of {sorted(SOURCES)}, got {source!r}")
    names = tier_names(source, tier_name)
    wh = Warehouse(warehouse)
    facts = wh.read_facts(run)
    if facts is None:
        raise ValueError(f"run {run!r} has no facts in {wh.root}: extract (or ingest) it first; known runs: "
                         f"{', '.join(wh.runs()) or 'none'}")
    cm = load_ctc_model(model, device, cache_dir=wh.cache_dir("_models"))
    recorded = facts.get("geometry")
    if recorded is not None and recorded != cm.geometry.as_dict():
        raise ValueError(f"{model}: frame geometry {cm.geometry.as_dict()} differs from run {run!r}'s {recorded}; "
                         "its frames would not be the run's frames. Use a checkpoint with the same conv stack")
    name = tier_name or SOURCES[source]
    stage = keys.labels_stage(name)
    params_sha = fingerprint({"model": cm.facts(), "source": source, "max_chunk_s": max_chunk_s,
                              "context_s": context_s})
    maker = {"model_id": cm.model_id, "weights": cm.revision, "source": source, "max_chunk_s": max_chunk_s,
             "context_s": context_s}
    claim_tiers(wh, run, stage, list(names.values()), params_sha, maker, overwrite_tier)
    corpus_shards = {shard for (_, st, shard) in wh.commits(run) if st in keys.CORPUS_STAGES}
    done = set() if overwrite_tier else {shard for (_, _, shard), rec in wh.commits(run, stage).items()
                                         if keys.params_sha256(rec) == params_sha}
    todo = corpus_shards - done
    counts = LabelCounts(skipped_shards=len(corpus_shards & done))
    if not todo:
        counts.wall_s = time.perf_counter() - started
        return counts
    kept = _kept_utterances(wh, run)
    spec = SourceSpec(**facts["source"])
    then, now = facts.get("corpus_fingerprint"), corpus_fingerprint(spec)
    if corpus_changed(then, now):
        raise CorpusChanged(f"run {run!r} in {wh.root}: its corpus {spec.corpus or 'the embedded corpus'} changed "
                            f"since the run was made (corpus_fingerprint {then!r} then, {now!r} now): labels would "
                            "attach to other audio; restore the corpus, or extract it again under a new --run")
    skip = frozenset(set(range(max(todo) + 1)) - todo)
    for shard, items in iter_shards(spec, int(facts["shard_size"]), skip=skip):
        if shard > max(todo):
            break
        prepared, _ = prepare_shard(items, stage, cm.geometry.receptive_field_samples)
        rows, unlabelled, dropped = _label_shard(cm, prepared, kept, source, run, max_chunk_s, context_s)
        counts.utterances += len({r["utterance_id"] for r in rows})
        table = pa.Table.from_pylist([{**r, "tier": names[r["tier"]]} for r in rows], schema=schemas.SEGMENTS)
        record = wh.write("segments", table, run, shard, file_prefix=name)
        wh.commit(run, stage, shard, [record], params_sha256=params_sha, model=cm.facts(), maker=maker,
                  tiers=list(names.values()), items=len(items), unlabelled=unlabelled, dropped=dict(dropped))
        counts.shards += 1
        counts.segments += table.num_rows
        counts.unlabelled.update(unlabelled)
        counts.dropped.update(dropped)
    counts.wall_s = time.perf_counter() - started
    return counts


def _label_shard(cm: CtcModel, prepared: list[Prepared], kept: dict[str, tuple[int, str | None]], source: str, run: str,
                 max_chunk_s: float | None, context_s: float) -> tuple[list[dict], dict[str, str], Counter]:
    """Segment rows of one shard's kept utterances (sorted by id), the unlabelled ones with why, dropped chars."""
    rows: list[dict] = []
    unlabelled: dict[str, str] = {}
    dropped: Counter = Counter()
    for p in sorted((p for p in prepared if p.utterance.utterance_id in kept), key=lambda p: p.utterance.utterance_id):
        uid = p.utterance.utterance_id
        n_samples, text = kept[uid]
        if n_samples != len(p.wave):
            raise ValueError(f"utterance {uid!r} of run {run!r} has {len(p.wave)} samples now, {n_samples} when "
                             "the run was made: the corpus changed; make a new run")
        lp = log_probs(cm, p.wave, max_chunk_s, context_s)
        if source == "greedy":
            segments = ctc.greedy_segments(lp, cm.id_to_token, cm.blank, cm.geometry)
        else:
            try:
                segments, lost = forced_segments(cm, lp, text, uid)
            except ValueError as err:
                log.warning("%s", err)
                unlabelled[uid] = str(err)
                continue
            dropped.update(lost)
        rows += [{"utterance_id": uid, **s.__dict__} for s in segments]
    return rows, unlabelled, dropped


def _kept_utterances(wh: Warehouse, run: str) -> dict[str, tuple[int, str | None]]:
    """utterance_id → (n_samples, text) of every committed utterance of the run."""
    out: dict[str, tuple[int, str | None]] = {}
    for path in wh.committed_files("utterances", run):
        t = wh.read_table(path, columns=["utterance_id", "n_samples", "text"]).to_pydict()
        out.update(zip(t["utterance_id"], zip(t["n_samples"], t["text"])))
    return out


@dataclass
class LabelsConfig:
    """The parameters of `labels`; the CLI's flags are these names (pipeline.cli builds them from the fields)."""

    run: str = field(metadata={"help": "the run to label; its corpus is reopened from its recorded source"})
    model: str = field(metadata={"help": "a …ForCTC checkpoint (hub id or folder) with its tokenizer"})
    warehouse: str = "storage"
    source: str = field(default="greedy", metadata={
        "choices": tuple(SOURCES),
        "help": "greedy: tier ctc_greedy (argmax per frame); forced: tiers ctc_char, ctc_word (Viterbi of the text)"})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    max_chunk_s: float | None = field(default=MAX_CHUNK_S, metadata={
        "help": "longer utterances run in windows of this length"})
    context_s: float = field(default=CONTEXT_S, metadata={"help": "context on each side of a window"})
    tier_name: str | None = field(default=None, metadata={
        "help": "write tier NAME (forced: NAME_char, NAME_word) instead of the default names, "
                "e.g. to keep a second model's labels beside the first's"})
    overwrite_tier: bool = field(default=False, metadata={
        "help": "replace a tier another model (or other settings) made; default: refuse"})


def run(cfg: LabelsConfig) -> LabelCounts:
    return labels(**asdict(cfg))
