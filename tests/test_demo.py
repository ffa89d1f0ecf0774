"""The offline before/after pair: the default model and the same model fine-tuned with CTC."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.model import demo as D
from pipeline import model as M
from pipeline.algorithms.cer import edit_distance

QUICK = D.Recipe(limit_steps=3, freeze_steps=1)  # head-only step, then two full steps


def test_edit_distance_on_phone_lists():  # the phone error rate's distance (pipeline.algorithms.cer)
    assert edit_distance([], []) == 0
    assert edit_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance(["a", "b"], ["b", "a", "x"]) == 2
    assert edit_distance(["k", "aI", "t"], []) == 3


def test_folder_name_follows_the_recipe(tmp_path):
    a = D.demo_model_path(tmp_path)
    assert a.name.startswith("default-ctc-") and a == D.demo_model_path(tmp_path, D.Recipe())
    assert D.demo_model_path(tmp_path, D.Recipe(seed=1)) != a
    assert D.demo_model_path(tmp_path, D.Recipe(epochs=11)) != a


def test_default_ctc_explains_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make demo-models"):
        M.load_model("default-ctc", device="cpu", cache_dir=tmp_path)


@pytest.mark.slow
def test_same_seed_same_weights_and_a_loadable_checkpoint(tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCTC, AutoTokenizer

    a = D.train_demo_model(tmp_path / "a", recipe=QUICK)
    b = D.train_demo_model(tmp_path / "b", recipe=QUICK)
    c = D.train_demo_model(tmp_path / "c", recipe=QUICK, seed=1)
    wa, wb, wc = (load_file(f / "model.safetensors") for f in (a, b, c))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)  # the seed matters
    frozen = [k for k in wa if ".feature_extractor." in k]
    base = load_file(M.default_model_path(tmp_path / "a" / "_models") / "model.safetensors")
    assert frozen and all(np.array_equal(wa[k], base[k.removeprefix("wav2vec2.")]) for k in frozen)
    assert not np.array_equal(wa["lm_head.weight"], wc["lm_head.weight"])

    facts = json.loads((a / D.TRAINING_FACTS).read_text())
    assert facts["steps"] == 3 and facts["recipe"]["seed"] == 0 and 0 <= facts["test_phone_error_rate"]
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left

    ctc = AutoModelForCTC.from_pretrained(a)
    tokenizer = AutoTokenizer.from_pretrained(a)
    vocab = json.loads((a / "vocab.json").read_text())
    assert type(ctc).__name__ == "Wav2Vec2ForCTC" and ctc.config.vocab_size == len(vocab)
    assert ctc.config.pad_token_id == vocab[D.BLANK] == 0
    assert tokenizer.decode([vocab["aI@"], vocab["t"]]) == "aI@ t"
    with torch.no_grad():
        logits = ctc(torch.zeros(1, 16_000)).logits
    assert logits.shape == (1, 49, len(vocab))

    with pytest.raises(FileNotFoundError, match="make demo-models"):  # the name means the default recipe only
        M.load_model("default-ctc", device="cpu", cache_dir=tmp_path / "a" / "_models")
    loaded = M.load_model(str(a), device="cpu")
    assert type(loaded.model).__name__ == "Wav2Vec2Model" and loaded.num_layers == 4


@pytest.mark.slow
def test_default_recipe_learns_and_fine_tuning_sharpens_the_upper_layers(tmp_path):
    """The real recipe, then the study's comparison on the embedded corpus: both runs labelled with
    the fine-tuned model's greedy CTC phones (the original's label source). Measured on all 240
    utterances (k = 50): best-layer AMI 0.10 before, 0.63 after (layer 3)."""
    from pipeline.stages.analyze import AnalyzeConfig, analyze
    from pipeline.stages.extract import ExtractConfig, extract
    from pipeline.stages.labels import labels

    folder = D.train_demo_model(tmp_path)
    facts = json.loads((folder / D.TRAINING_FACTS).read_text())
    assert facts["recipe"] == json.loads(json.dumps(dataclasses.asdict(D.Recipe()))) and facts["steps"] == 450
    assert facts["train_phone_error_rate"] < 0.5 and facts["epoch_loss"][-1] < facts["epoch_loss"][2] / 2
    assert facts["test_phone_error_rate"] < 1.0
    loaded = M.load_model("default-ctc", device="cpu", cache_dir=tmp_path / "_models")
    assert loaded.model_id == "default-ctc" and loaded.revision == M.folder_fingerprint(folder)
    best = {}
    for run, model in (("before", "default"), ("after", "default-ctc")):
        extract(ExtractConfig(run=run, model=model, warehouse=str(tmp_path), limit=120, layers="0,2,3,4",
                              progress=False))
        labels(run, "default-ctc", warehouse=str(tmp_path))
        rows = analyze(AnalyzeConfig(run=run, warehouse=str(tmp_path), tier="ctc_greedy", k=50, probe=False,
                                     n_iter=20))
        best[run] = max(r["ami"] for r in rows)
    assert best["after"] > best["before"] + 0.2, best
