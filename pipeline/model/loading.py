"""Load a wav2vec2-family checkpoint (hub id, local folder or named model) as its base encoder.

Layers: -1 = conv feature encoder output (C = conv_dim[-1], 512 in the real models; what the
original study calls "CNN"), 0 = `hidden_states[0]` (input of the first transformer layer, as
the encoder reports it), 1..N = transformer layer outputs. About 50 frames per second.

Never the checkpoint's own code (`trust_remote_code=False` everywhere); never an encoder
that transformers would complete with random weights. The checks here are public so that every
loader (`labels.load_ctc_model` too) applies the same ones.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.corpus.records import TARGET_SAMPLE_RATE_HZ
from pipeline.model.fingerprint import config_fingerprint, revision
from pipeline.model.registry import resolve_model

log = logging.getLogger(__name__)

LAYER_CNN = -1
SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ESSENTIAL_WEIGHT_PREFIXES = ("feature_extractor.", "feature_projection.", "encoder.")  # of the base model


@dataclass
class LoadedModel:
    """A base encoder in eval mode on its device, with the facts a run records."""

    model: torch.nn.Module  # Wav2Vec2Model / HubertModel / WavLMModel / Data2VecAudioModel
    config: Any
    geometry: FrameGeometry
    num_layers: int  # transformer layers N
    hidden_size: int
    conv_dim: int  # channels of the conv encoder output (layer -1)
    do_normalize: bool
    do_normalize_source: str  # "preprocessor_config" or "convention"
    model_id: str
    revision: str  # hub commit hash, or "sha256:…" of the folder's config + weight files
    config_fingerprint: str  # sha256 of the canonical config JSON
    device: torch.device
    dtype: str  # compute dtype under autocast ("float32": no autocast)

    @property
    def family(self) -> str:
        return self.config.model_type

    @property
    def valid_layers(self) -> list[int]:
        return list(range(LAYER_CNN, self.num_layers + 1))

    def layer_dim(self, layer: int) -> int:
        return self.conv_dim if layer == LAYER_CNN else self.hidden_size

    def facts(self) -> dict[str, Any]:
        """What a run records once and checks on every append."""
        return {"model_id": self.model_id, "revision": self.revision, "family": self.family,
                "dtype": self.dtype, "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "conv_dim": self.conv_dim, "do_normalize": self.do_normalize,
                "config_fingerprint": self.config_fingerprint, **self.geometry.as_dict()}

    def first_group_norm(self) -> torch.nn.Module | None:
        """The first conv layer when it normalises over time (feat_extract_norm == "group"), else None."""
        if getattr(self.config, "feat_extract_norm", "layer") != "group":
            return None
        first = self.model.feature_extractor.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if not (isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels):
            raise ValueError(f"{self.model_id}: feat_extract_norm is 'group' but the first conv layer has "
                             f"{type(norm).__name__}, not a per-channel GroupNorm; cannot batch it exactly")
        return first


def load_model(id_or_path: str | os.PathLike, device: str = "auto", dtype: str = "float32",
               cache_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load any wav2vec2 / HuBERT / WavLM / data2vec-audio checkpoint (hub id or local folder).

    `…ForCTC` / `…ForPreTraining` checkpoints give their base encoder: `AutoModel` maps every
    supported `model_type` to its base class and strips the head's `base_model_prefix` from the
    weight names, for all four families. Weights stay float32; `dtype` is the autocast compute
    dtype on CUDA (and CPU). Named models (pipeline/model/registry.py) are folders under
    `cache_dir`: `"default"` is the embedded random-weight model (no network); `"default-ctc"`
    the same model fine-tuned on the embedded corpus (pipeline/model/demo.py), if trained.
    Never `trust_remote_code`.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the pipeline's own progress

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    dev = resolve_device(device)
    model_id = str(id_or_path)
    source = resolve_model(id_or_path, cache_dir)
    config = load_config(source, model_id)
    check_model_type(model_id, config)
    _warn_ignored_code(model_id, "config.json", config)
    model, info = AutoModel.from_pretrained(source, config=config, trust_remote_code=False, output_loading_info=True)
    refuse_missing_weights(model_id, source, model, info.get("missing_keys", []))
    if not hasattr(model, "feature_extractor"):  # not expected from AutoModel; a head model's base
        model = getattr(model, model.base_model_prefix)
    # float32 weights whatever the file holds (autocast picks the compute dtype);
    # eval: no SpecAugment time masking (mask_time_prob acts only in training), no dropout
    model.float().eval().requires_grad_(False).to(dev)
    do_normalize, norm_source, rate_hz = feature_extractor_facts(source, config)
    check_sample_rate(model_id, rate_hz)
    loaded = LoadedModel(
        model=model, config=config, geometry=FrameGeometry.from_config(config, rate_hz),
        num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),
        conv_dim=int(config.conv_dim[-1]), do_normalize=do_normalize, do_normalize_source=norm_source,
        model_id=model_id, revision=revision(source), config_fingerprint=config_fingerprint(config),
        device=dev, dtype=dtype)
    loaded.first_group_norm()  # fails now, not mid-run, on a group-norm stack this code cannot batch
    return loaded


def load_config(source: str | os.PathLike, model_id: str | None = None):
    """The checkpoint's config (never its code). A model that is neither a local folder nor reachable
    (offline, no such id, not in the Hugging Face cache) is one clear error that says what to do."""
    from transformers import AutoConfig

    model_id = model_id or str(source)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except OSError as err:
        if Path(source).is_dir():
            raise OSError(f"model folder {source} has no readable config.json ({' '.join(str(err).split())[:200]}): "
                          "pass the folder a checkpoint was saved to (save_pretrained)") from err
        raise OSError(f"model {model_id!r} is not a local folder and cannot be loaded from the Hugging Face Hub "
                      "(offline, not in the local cache, or no such id): download it where the Hub is reachable "
                      f"(`huggingface-cli download {model_id} --local-dir DIR`) and pass --model DIR, or point "
                      "HF_HOME at a cache that holds it") from err


def check_model_type(model_id: str, config: Any) -> None:
    """Only the four families whose conv encoder and frame geometry this package knows."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{model_id}: model_type {config.model_type!r} is not supported; "
                         f"expected one of {SUPPORTED_MODEL_TYPES}")


def check_sample_rate(model_id: str, rate_hz: int) -> None:
    """The corpus readers resample to 16 kHz; a model trained on another rate would see wrong audio."""
    if rate_hz != TARGET_SAMPLE_RATE_HZ:
        raise ValueError(f"{model_id}: feature extractor expects {rate_hz} Hz, the pipeline feeds "
                         f"{TARGET_SAMPLE_RATE_HZ} Hz")


def refuse_missing_weights(model_id: str, source: str | os.PathLike, model: torch.nn.Module,
                           missing_keys: Sequence[str]) -> None:
    """Fail when the checkpoint lacks any weight of the conv encoder, its projection or the
    transformer: transformers would initialise them at random and every layer would be noise.

    What a base checkpoint may lack stays allowed (`masked_spec_embed`, an adapter); heads
    (`lm_head`, `quantizer`, `project_q`, `project_hid`) are not part of the base model at all.
    """
    prefix = f"{model.base_model_prefix}."
    names = sorted(k for k in missing_keys if k.removeprefix(prefix).startswith(ESSENTIAL_WEIGHT_PREFIXES))
    if names:
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        raise ValueError(f"{model_id}: the checkpoint in {source} lacks {len(names)} weight tensors of the encoder "
                         f"({shown}); transformers would fill them with random values. Use a complete "
                         "wav2vec2-family checkpoint (download it again, or save it with save_pretrained)")


def resolve_device(device: str) -> torch.device:
    """CUDA when available for "auto", else CPU; a CUDA device asked for without CUDA is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def feature_extractor_facts(source: str | os.PathLike, config: Any) -> tuple[bool, str, int]:
    """(do_normalize, where it came from, sampling rate).

    The checkpoint's own preprocessor_config.json wins: it is what the HF processor would do and
    what the model card's numbers were made with. Without one, fall back to fairseq's convention:
    layer-norm conv stacks (large, XLS-R, data2vec) were trained on normalised audio, group-norm
    base models on raw audio. Never the checkpoint's own code: an `auto_map` in the file is
    ignored and the standard class of the model's family reads it (`config` makes it known).
    """
    from transformers import AutoFeatureExtractor
    from transformers.utils.hub import cached_file

    convention = getattr(config, "feat_extract_norm", "layer") == "layer"
    if cached_file(str(source), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False) is None:
        return convention, "convention", TARGET_SAMPLE_RATE_HZ
    try:
        fe = AutoFeatureExtractor.from_pretrained(source, config=config, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: its preprocessor_config.json cannot be read by the standard feature extractor "
                         f"of {config.model_type!r} ({err}); code that comes with a checkpoint is never run. Fix the "
                         "file (it needs do_normalize and sampling_rate) or remove it (then the convention below "
                         "decides do_normalize)") from None
    _warn_ignored_code(str(source), "preprocessor_config.json", fe)
    rate = int(getattr(fe, "sampling_rate", None) or TARGET_SAMPLE_RATE_HZ)
    if hasattr(fe, "do_normalize"):
        return bool(fe.do_normalize), "preprocessor_config", rate
    return convention, "convention", rate


def _warn_ignored_code(model_id: str, file_name: str, obj: Any) -> None:
    auto_map = getattr(obj, "auto_map", None)
    if auto_map:
        log.warning("%s: %s names code of its own (auto_map: %s); it is not run, transformers' standard classes "
                    "read the checkpoint", model_id, file_name, ", ".join(sorted(map(str, auto_map.values()))))


# ---------------------------------------------------------------- layers


def parse_layers(spec: str | int | Sequence[int | str], num_layers: int) -> list[int]:
    """'all', '-1,0,12', '8-12', '-1-3' or a list of those -> sorted unique layers in -1..N."""
    items: list[str] = ([str(spec)] if isinstance(spec, (str, int))
                        else [str(s) for s in spec])
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no layers in {spec!r}; valid layers are {_layer_range_text(num_layers)}")
    out: set[int] = set()
    for part in parts:
        if part.lower() == "all":
            out.update(range(LAYER_CNN, num_layers + 1))
            continue
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", part)
        if m is None:
            raise ValueError(f"cannot read layer {part!r} in {spec!r}; use 'all', '-1,0,12' or '8-12'; "
                             f"valid layers are {_layer_range_text(num_layers)}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo > hi:
            raise ValueError(f"layer range {part!r} is empty (start > end)")
        for layer in (lo, hi):
            if not LAYER_CNN <= layer <= num_layers:
                raise ValueError(f"layer {layer} does not exist; valid layers are {_layer_range_text(num_layers)}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _layer_range_text(num_layers: int) -> str:
    return (f"-1..{num_layers} (-1 = conv feature encoder, 0 = transformer input, "
            f"1..{num_layers} = transformer layers)")
