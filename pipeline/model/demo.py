"""An offline before/after pair: the embedded default model, and the same model fine-tuned with CTC.

The real study compares a pre-trained wav2vec2 with its CTC fine-tuned version; with no checkpoint
reachable, this builds the "after" model from the embedded default's random initialisation
(`--model default`) on the embedded corpus's train split, so that `--model default-ctc` can be
extracted and analysed beside it:

    python -m pipeline demo-models [--warehouse DIR] [--seed S]   # → DIR/_models/default-ctc-<hash>/
    python -m pipeline extract --run demo-ctc --model default-ctc [--warehouse DIR]

Recipe (the standard wav2vec2 fine-tuning one, `Recipe` below): `Wav2Vec2ForCTC` with the default
model's weights and a new linear head over the phone inventory; the conv feature encoder frozen
(`freeze_feature_encoder()`), so its outputs are computed once, exactly as extraction computes
them (`pipeline.model.extract`, layer -1), and every epoch trains only feature projection,
transformer and head; SpecAugment time masking, dropout and LayerDrop are recipe fields (off:
see `Recipe`); AdamW with linear warm-up and decay; everything drawn from one seed. Targets: each
utterance's phone sequence without `sil` (silence is what CTC's blank is for, and a `sil` token
would mostly teach the model where utterances start and end) and without word boundaries (no
acoustic extent of their own; phone error rate needs none). Greedy CTC phone error rate on the
test split (two speakers the model never heard) goes into `training.json` beside the weights.

The folder is a complete checkpoint: `AutoModelForCTC.from_pretrained(folder)` loads it, its
tokenizer (`Wav2Vec2PhonemeCTCTokenizer`: space-separated phone tokens, since espeak-ng mnemonics
such as `aI@` are several characters) maps ids to phones, and `pipeline.model.load_model` takes
its base encoder. It is built in a temporary sibling folder and renamed into place; its name is a
hash of the recipe, the default model's config and the training data, so a changed recipe never
reuses an old model. Same seed, same torch build and thread count: same weights (tests/test_demo.py).

Seed 0, 450 steps: train loss 15.8 → 0.38, phone error rate 0.21 train, 0.87 test (unseen voices:
it memorises six voices). Labelled with its own greedy CTC phones (`labels`, the study's label
source), the pair shows the study's pattern: phone AMI (k = 50) of the best layer 0.10 before,
0.63 after; against the corpus's true phone alignments the upper layers cluster less after
fine-tuning (README, "The offline before/after pair", has the table per layer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.algorithms.cer import edit_distance
from pipeline.algorithms.phone_classes import SILENCE
from pipeline.algorithms.ctc import collapse
from pipeline.corpus import embedded
from pipeline.corpus.audio import decode
from pipeline.model.forward import extract
from pipeline.model.loading import load_model
from pipeline.model.registry import DEMO_CTC_MODEL_ID, default_model_path, ensure_default_model, seeded

BLANK, UNK = "<pad>", "<unk>"  # id 0 is the CTC blank, as in every wav2vec2 CTC checkpoint
TRAINING_FACTS = "training.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; its hash names the model folder."""

    seed: int = 0
    epochs: int = 10  # 180 train utterances, 45 steps each: 450 steps
    batch_size: int = 4  # more updates per epoch beat bigger batches for the same compute
    lr: float = 1e-3
    warmup_share: float = 0.1  # of all steps, then linear decay to 0 (HF Trainer's "linear")
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.98)
    max_grad_norm: float = 1.0
    # First steps train the head only (fairseq's freeze_finetune_updates). Without it the whole
    # model collapses onto the blank within ~10 steps and stays there (loss ~3.9 after 360 steps).
    freeze_steps: int = 90  # 2 epochs, each ~4x cheaper than a full one (no backward below the head)
    # Regularisation of the config (0.1, 0.1, 0.05) slows the escape from the blank plateau
    # past these 450 steps; off, the training split is learnt and the test PER shows the gap.
    dropout: float = 0.0  # hidden, attention, projection and head dropout
    layerdrop: float = 0.0
    mask_time_prob: float = 0.0  # SpecAugment time masking, spans of mask_time_length (10) frames
    limit_steps: int | None = None  # stop early (tests of determinism); None: every epoch

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"recipe needs epochs >= 1, batch_size >= 1, lr > 0; got {self}")


@dataclass
class Utterance:
    utterance_id: str
    features: torch.Tensor  # (n_frames, conv_dim): frozen conv encoder output, layer -1
    phones: list[str]  # without silence


# ---------------------------------------------------------------- where the model lives


def demo_model_path(cache_dir: str | os.PathLike, recipe: Recipe = Recipe()) -> Path:
    """`<cache_dir>/default-ctc-<hash>`: a hash of recipe, default model config and training data."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    digest.update(default_model_path(cache_dir).name.encode())  # itself named by the config's hash
    for split in embedded.SPLITS:
        digest.update(Path(embedded.data_files()[split]).read_bytes())
    return Path(cache_dir) / f"{DEMO_CTC_MODEL_ID}-{digest.hexdigest()[:12]}"


def resolve_demo_model(cache_dir: str | os.PathLike | None) -> Path:
    """The trained folder for `--model default-ctc` (seed 0, default recipe), or a clear error."""
    cache = default_model_path(cache_dir).parent  # the same cache folder rule as `default`
    folder = demo_model_path(cache)
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(
            f"model {DEMO_CTC_MODEL_ID!r}: no trained model at {folder}; run `make demo-models` first "
            f"(python -m pipeline demo-models --warehouse {cache.parent})")
    return folder


# ---------------------------------------------------------------- data


def load_split(split: str, loaded: Any) -> list[Utterance]:
    """Decode one split of the embedded corpus and run the frozen conv encoder on it, exactly as
    extraction does (per-utterance normalisation and group-norm statistics)."""
    table = pq.read_table(embedded.data_files()[split], columns=["id", "audio", "phonetic_detail"])
    rows = table.to_pylist()
    waves = [decode(row["audio"]["bytes"], row["id"])[0] for row in rows]
    feats = extract(loaded, waves, [-1])
    return [Utterance(row["id"], torch.from_numpy(f[-1]),
                      [p for p in row["phonetic_detail"]["utterance"] if p != SILENCE])
            for row, f in zip(rows, feats)]


def phone_vocab(utterances: list[Utterance]) -> dict[str, int]:
    """Blank first, then <unk>, then the phones of the training utterances, sorted."""
    phones = sorted({p for u in utterances for p in u.phones})
    return {tok: i for i, tok in enumerate([BLANK, UNK, *phones])}


def _batch(utts: list[Utterance], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features B x T x C zero-padded, frame mask B x T, targets concatenated, target lengths)."""
    lengths = torch.tensor([len(u.features) for u in utts])
    feats = torch.zeros(len(utts), int(lengths.max()), utts[0].features.shape[1])
    for b, u in enumerate(utts):
        feats[b, :len(u.features)] = u.features
    mask = torch.arange(feats.shape[1])[None, :] < lengths[:, None]
    targets = torch.tensor([vocab.get(p, vocab[UNK]) for u in utts for p in u.phones])
    return feats, mask, targets, torch.tensor([len(u.phones) for u in utts])


# ---------------------------------------------------------------- model


def build_ctc_model(default_folder: Path, vocab: dict[str, int], recipe: Recipe) -> torch.nn.Module:
    """Wav2Vec2ForCTC with the default model's weights, a seeded new head, conv encoder frozen."""
    from transformers import Wav2Vec2ForCTC
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "lm_head newly initialized" is the point here
    try:
        with seeded(recipe.seed):
            model = Wav2Vec2ForCTC.from_pretrained(
                default_folder, vocab_size=len(vocab), pad_token_id=vocab[BLANK],
                ctc_loss_reduction="mean", ctc_zero_infinity=True,
                hidden_dropout=recipe.dropout, attention_dropout=recipe.dropout,
                feat_proj_dropout=recipe.dropout, final_dropout=recipe.dropout,
                layerdrop=recipe.layerdrop, mask_time_prob=recipe.mask_time_prob)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.freeze_feature_encoder()
    return model


def ctc_logits(model: torch.nn.Module, feats: torch.Tensor, mask: torch.Tensor,
               time_mask: torch.Tensor | None = None, head_only: bool = False) -> torch.Tensor:
    """Wav2Vec2ForCTC.forward from cached conv features: projection, SpecAugment, encoder, head.

    `head_only`: no gradients below the head (the encoder still runs in the model's mode).
    """
    w2v = model.wav2vec2
    with torch.no_grad() if head_only else contextlib.nullcontext():
        hidden, _ = w2v.feature_projection(feats)
        if time_mask is not None:
            hidden = w2v._mask_hidden_states(hidden, mask_time_indices=time_mask)
        hidden = w2v.encoder(hidden, attention_mask=mask).last_hidden_state
    return model.lm_head(model.dropout(hidden))


def spec_augment_mask(config: Any, mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Time-masking spans as HF draws them (mask_time_prob, mask_time_length), from our own RNG."""
    n_frames = mask.sum(1).numpy()
    out = np.zeros(mask.shape, bool)
    for b, n in enumerate(n_frames):
        n_spans = int(config.mask_time_prob * n / config.mask_time_length + rng.random())
        n_spans = max(n_spans, config.mask_time_min_masks)
        if n <= config.mask_time_length:
            continue
        for start in rng.choice(n - config.mask_time_length, size=min(n_spans, n - config.mask_time_length), replace=False):
            out[b, start:start + config.mask_time_length] = True
    return torch.from_numpy(out)


def ctc_loss(logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    return torch.nn.functional.ctc_loss(log_probs, targets, mask.sum(1), target_lengths, blank=0,
                                        reduction="mean", zero_infinity=True)


# ---------------------------------------------------------------- train and evaluate


def train(model: torch.nn.Module, utts: list[Utterance], vocab: dict[str, int], recipe: Recipe,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """AdamW over the trainable parameters; returns {steps, epoch_loss, seconds}."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.adam_betas)
    steps_per_epoch = math.ceil(len(utts) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = max(1, int(recipe.warmup_share * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    rng = np.random.default_rng(recipe.seed)
    epoch_loss: list[float] = []
    step, start = 0, time.perf_counter()
    model.train()
    with seeded(recipe.seed):  # dropout and LayerDrop draw from torch's generator
        for epoch in range(recipe.epochs):
            order = rng.permutation(len(utts))
            losses = []
            for i in range(0, len(utts), recipe.batch_size):
                feats, mask, targets, target_lengths = _batch([utts[j] for j in order[i:i + recipe.batch_size]], vocab)
                time_mask = spec_augment_mask(model.config, mask, rng) if recipe.mask_time_prob > 0 else None
                logits = ctc_logits(model, feats, mask, time_mask, head_only=step < recipe.freeze_steps)
                loss = ctc_loss(logits, mask, targets, target_lengths)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(loss.item())
                step += 1
                if recipe.limit_steps is not None and step >= recipe.limit_steps:
                    break
            epoch_loss.append(round(float(np.mean(losses)), 4))
            if log:
                log(f"demo-models: epoch {epoch + 1}/{recipe.epochs} loss {epoch_loss[-1]:.3f} "
                    f"({time.perf_counter() - start:.0f} s)")
            if recipe.limit_steps is not None and step >= recipe.limit_steps:
                break
    model.eval()
    return {"steps": step, "epoch_loss": epoch_loss, "train_seconds": round(time.perf_counter() - start, 1)}


@torch.inference_mode()
def phone_error_rate(model: torch.nn.Module, utts: list[Utterance], vocab: dict[str, int]) -> float:
    """Greedy CTC decoding, edits / reference phones over all utterances (model in eval mode)."""
    ids = {i: tok for tok, i in vocab.items()}
    edits = n_ref = 0
    for i in range(0, len(utts), 16):
        batch = utts[i:i + 16]
        feats, mask, _, _ = _batch(batch, vocab)
        best = ctc_logits(model, feats, mask).argmax(-1)
        for b, u in enumerate(batch):
            hyp = [ids[int(t)] for t in collapse(best[b, :len(u.features)].numpy(), blank=vocab[BLANK])[0]]
            edits += edit_distance(hyp, u.phones)
            n_ref += len(u.phones)
    return edits / max(1, n_ref)


# ---------------------------------------------------------------- entry point


def train_demo_model(warehouse: str | os.PathLike = "storage", seed: int = 0, recipe: Recipe | None = None,
                     log: Callable[[str], None] | None = None) -> Path:
    """Train the default model with CTC on the embedded train split; return its checkpoint folder.

    Present already (same recipe, same default model, same data): returned as is. Else built into
    a temporary folder under `<warehouse>/_models/` and renamed into place, with `training.json`
    (recipe, steps, seconds, loss per epoch, test phone error rate, versions) beside the weights.
    """
    recipe = dataclasses.replace(recipe or Recipe(), seed=seed)
    log = log or _stderr
    cache = Path(warehouse) / "_models"
    folder = demo_model_path(cache, recipe)
    if (folder / "model.safetensors").exists() and (folder / TRAINING_FACTS).exists():
        return folder
    default_folder = ensure_default_model(default_model_path(cache))
    start = time.perf_counter()
    train_utts, test_utts = _frozen_features(default_folder)
    feature_seconds = time.perf_counter() - start
    vocab = phone_vocab(train_utts)
    model = build_ctc_model(default_folder, vocab, recipe)
    facts = train(model, train_utts, vocab, recipe, log)
    per = phone_error_rate(model, test_utts, vocab)
    facts = {"model_id": DEMO_CTC_MODEL_ID, "base_model": default_folder.name, "recipe": dataclasses.asdict(recipe),
             **facts, "feature_seconds": round(feature_seconds, 1), "test_phone_error_rate": round(per, 4),
             "train_phone_error_rate": round(phone_error_rate(model, train_utts, vocab), 4),
             "n_train": len(train_utts), "n_test": len(test_utts), "vocab_size": len(vocab),
             "targets": "phones without sil, no word boundaries; blank = <pad> (id 0)",
             "torch": torch.__version__, "transformers": _transformers_version(),
             "torch_threads": torch.get_num_threads()}
    if log:
        log(f"demo-models: test phone error rate {per:.3f}, {facts['train_seconds']} s training → {folder}")
    _save(model, vocab, default_folder, folder, facts)
    return folder


_FEATURES: dict[str, tuple[list[Utterance], list[Utterance]]] = {}  # default model name → (train, test)


def _frozen_features(default_folder: Path) -> tuple[list[Utterance], list[Utterance]]:
    """Conv features of both splits, computed once per process: the encoder is frozen."""
    if default_folder.name not in _FEATURES:  # the name is a hash of the config; weights follow from it
        base = load_model(str(default_folder), device="cpu")
        _FEATURES[default_folder.name] = (load_split("train", base), load_split("test", base))
    return _FEATURES[default_folder.name]


def _save(model: torch.nn.Module, vocab: dict[str, int], default_folder: Path, folder: Path, facts: dict) -> None:
    from transformers import Wav2Vec2PhonemeCTCTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
        tokenizer = Wav2Vec2PhonemeCTCTokenizer(str(tmp / "vocab.json"), unk_token=UNK, pad_token=BLANK,
                                                bos_token=None, eos_token=None, do_phonemize=False)
        tokenizer.save_pretrained(tmp)
        shutil.copy(default_folder / "preprocessor_config.json", tmp / "preprocessor_config.json")
        (tmp / TRAINING_FACTS).write_text(json.dumps(facts, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race with the same recipe
            if not (folder / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
