"""Tiny random-weight checkpoints saved like real ones, one per model family `load_model` supports, and a
fine-tuned-looking CTC model with its tokenizer. torch and transformers load when a builder is called."""

from __future__ import annotations

import json
from pathlib import Path

# wav2vec2's conv kernels and strides (400-sample window, 320-sample hop) with 16 channels instead of 512.
_GEOMETRY = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=12,
               mask_time_prob=0.5, mask_time_length=2, num_conv_pos_embedding_groups=2, **_GEOMETRY)
TINY_FAMILIES = ("wav2vec2-group", "wav2vec2-layer", "hubert-group", "hubert-layer", "wavlm-group", "data2vec-audio")
CTC_VOCAB = ["<pad>", "<unk>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]  # <pad> (id 0) is the CTC blank


def tiny_config(family: str):
    """The transformers config of a 2-layer, 32-wide model of `family` (one of TINY_FAMILIES): `-group`
    and `-layer` are the conv stack's normalisation (base-style and large-style checkpoints)."""
    from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig

    group = dict(feat_extract_norm="group", do_stable_layer_norm=False, num_conv_pos_embeddings=16)
    layer = dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16)
    configs = {
        "wav2vec2-group": lambda: Wav2Vec2Config(**group, **_COMMON),
        "wav2vec2-layer": lambda: Wav2Vec2Config(**layer, **_COMMON),
        "hubert-group": lambda: HubertConfig(**group, **_COMMON),
        "hubert-layer": lambda: HubertConfig(**layer, feat_proj_layer_norm=False, **_COMMON),
        "wavlm-group": lambda: WavLMConfig(**group, num_buckets=32, max_bucket_distance=64, **_COMMON),
        "data2vec-audio": lambda: Data2VecAudioConfig(num_conv_pos_embeddings=5, conv_pos_kernel_size=5, **_COMMON),
    }
    if family not in configs:
        raise ValueError(f"unknown tiny model family {family!r}: expected one of {', '.join(TINY_FAMILIES)}")
    return configs[family]()


def save_tiny(folder: Path, family: str, head: str = "AutoModel") -> Path:
    """A random-weight checkpoint (seed 0) saved like any other: config.json + model.safetensors.
    `head` is a transformers class name (e.g. "Wav2Vec2ForCTC"); "AutoModel" saves the bare encoder."""
    import torch
    import transformers

    config = tiny_config(family)
    torch.manual_seed(0)
    if head == "AutoModel":
        model = transformers.AutoModel.from_config(config)
    else:
        model = getattr(transformers, head)(config)
    model.save_pretrained(folder)
    return folder


def save_tiny_ctc(folder: Path, seed: int = 0, head: str = "Wav2Vec2ForCTC", **overrides) -> Path:
    """A random Wav2Vec2ForCTC with a character vocabulary (CTC_VOCAB), tokenizer and feature extractor, saved
    like a fine-tuned checkpoint; `overrides` go to Wav2Vec2Config. The head's weights are scaled up so that
    the argmax changes from frame to frame."""
    import torch
    import transformers
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(CTC_VOCAB)}))
    Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                         word_delimiter_token="|").save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    config = Wav2Vec2Config(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=len(CTC_VOCAB), pad_token_id=0, conv_bias=True,
                                      feat_extract_norm="layer", do_stable_layer_norm=True,
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **_GEOMETRY),
                               **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config)
    if hasattr(model, "lm_head"):
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    return folder
