"""Load a wav2vec2-family checkpoint and extract its layers, batched and chunked, exactly.

Layers: -1 = conv feature encoder output (C = conv_dim[-1], 512 in the real models; what the
original study calls "CNN"), 0 = `hidden_states[0]` (input of the first transformer layer, as
the encoder reports it), 1..N = transformer layer outputs. About 50 frames per second.

Why not `model(padded_batch, attention_mask)`: the first conv layer of group-norm models
(wav2vec2-base, HuBERT-base, WavLM-base) normalises each channel over the whole time axis, so
zero padding changes every frame (relative error ~1 on random weights); data2vec-audio's 5-layer
positional conv lets padded frames leak into real ones even with the mask. So here: normalise
each waveform on its own; run the conv encoder on the zero-padded batch but compute that
GroupNorm with each waveform's own statistics over its valid steps (every other conv step is
local: frame i reads samples [320 i, 320 i + 400) only); then run projection + transformer
batched with the frame-level attention mask, zeroing padded frames before every positional conv
layer. Result: one-at-a-time outputs within float32 rounding (relative 1e-5, tests/test_model.py).
The same whole-utterance statistics keep layers -1 and 0 exact when long recordings run in windows,
one window at a time: `extract_windows` streams them, so memory does not grow with the recording
beyond one normalised float32 copy of it (230 MB per hour).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from pipeline.algorithms.geometry import FrameGeometry
from pipeline.corpus.records import TARGET_SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

LAYER_CNN = -1
SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NORM_EPS = 1e-7  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
DEFAULT_MAX_BATCH_SAMPLES = 100 * TARGET_SAMPLE_RATE_HZ  # 100 s of padded audio per batch
DEFAULT_MAX_BATCH_SIZE = 32
STATS_PIECE_SAMPLES = 30 * TARGET_SAMPLE_RATE_HZ  # conv0 output of a piece: 512 x 96k floats, 197 MB
DEFAULT_MODEL_ID = "default"
DEMO_CTC_MODEL_ID = "default-ctc"  # the default model fine-tuned with CTC on the embedded corpus
DEFAULT_MODEL_SOURCE = Path(__file__).resolve().parent / "default_model"
ESSENTIAL_WEIGHT_PREFIXES = ("feature_extractor.", "feature_projection.", "encoder.")  # of the base model
WEIGHT_FILE_RE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt)$|.*\.safetensors\.index\.json$|.*\.bin\.index\.json$")


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


# ---------------------------------------------------------------- loading


def load_model(id_or_path: str | os.PathLike, device: str = "auto", dtype: str = "float32",
               cache_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load any wav2vec2 / HuBERT / WavLM / data2vec-audio checkpoint (hub id or local folder).

    `…ForCTC` / `…ForPreTraining` checkpoints give their base encoder: `AutoModel` maps every
    supported `model_type` to its base class and strips the head's `base_model_prefix` from the
    weight names, for all four families. Weights stay float32; `dtype` is the autocast compute
    dtype on CUDA (and CPU). `"default"` is the embedded random-weight model (no network);
    `"default-ctc"` the same model fine-tuned on the embedded corpus (pipeline/model/demo.py), if trained.
    Never `trust_remote_code`.
    """
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the pipeline's own progress

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    dev = _resolve_device(device)
    model_id = str(id_or_path)
    source: str | os.PathLike = id_or_path
    if model_id == DEFAULT_MODEL_ID:
        source = ensure_default_model(default_model_path(cache_dir))
    elif model_id == DEMO_CTC_MODEL_ID:  # trained by `python -m pipeline demo-models` (pipeline/model/demo.py)
        from pipeline.model.demo import resolve_demo_model

        source = resolve_demo_model(cache_dir)
    config = load_config(source, model_id)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{model_id}: model_type {config.model_type!r} is not supported; "
                         f"expected one of {SUPPORTED_MODEL_TYPES}")
    _warn_ignored_code(model_id, "config.json", config)
    model, info = AutoModel.from_pretrained(source, config=config, trust_remote_code=False, output_loading_info=True)
    _refuse_missing_weights(model_id, source, model, info.get("missing_keys", []))
    if not hasattr(model, "feature_extractor"):  # not expected from AutoModel; a head model's base
        model = getattr(model, model.base_model_prefix)
    # float32 weights whatever the file holds (autocast picks the compute dtype);
    # eval: no SpecAugment time masking (mask_time_prob acts only in training), no dropout
    model.float().eval().requires_grad_(False).to(dev)
    do_normalize, norm_source, rate_hz = _feature_extractor_facts(source, config)
    if rate_hz != TARGET_SAMPLE_RATE_HZ:
        raise ValueError(f"{model_id}: feature extractor expects {rate_hz} Hz, the pipeline feeds "
                         f"{TARGET_SAMPLE_RATE_HZ} Hz")
    loaded = LoadedModel(
        model=model, config=config, geometry=FrameGeometry.from_config(config, rate_hz),
        num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),
        conv_dim=int(config.conv_dim[-1]), do_normalize=do_normalize, do_normalize_source=norm_source,
        model_id=model_id, revision=_revision(source), config_fingerprint=config_fingerprint(config),
        device=dev, dtype=dtype)
    _first_group_norm(loaded)  # fails now, not mid-run, on a group-norm stack this code cannot batch
    return loaded


def _refuse_missing_weights(model_id: str, source: str | os.PathLike, model: torch.nn.Module,
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


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def _feature_extractor_facts(source: str | os.PathLike, config: Any) -> tuple[bool, str, int]:
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


def _revision(source: str | os.PathLike) -> str:
    """Hub commit hash when the files come from the hub cache, else a hash of the local files."""
    from transformers.utils.hub import cached_file, extract_commit_hash

    resolved = cached_file(str(source), "config.json")
    commit = extract_commit_hash(resolved, None)
    return commit if commit else folder_fingerprint(Path(resolved).parent)


def folder_fingerprint(folder: str | os.PathLike, cache: bool = True) -> str:
    """sha256 over config.json and the weight files (names and bytes), sorted by name.

    Hashing a base-size checkpoint's 380 MB takes ~0.3 s per process (every torchrun rank, every
    resume). With `cache`, the digest is kept under the user cache folder keyed by the folder's
    absolute path and each file's (size, mtime_ns, ctime_ns, inode), as git's index does; any change
    to a file's stat rehashes it. ctime matters: a file rewritten in place with its mtime restored
    (`os.utime`, `touch -d`, `cp -p`) keeps size, mtime and inode, but the kernel sets its ctime to
    now and nobody can set it back. The cache is only an optimisation: unreadable or unwritable, it is skipped.
    """
    folder = Path(folder).resolve()
    names = sorted(p.name for p in folder.iterdir() if p.is_file()
                   and (p.name == "config.json" or WEIGHT_FILE_RE.fullmatch(p.name)))
    stats = {name: [(st := (folder / name).stat()).st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
             for name in names}
    entry = _fingerprint_cache_path(folder) if cache else None
    if entry is not None:
        try:
            saved = json.loads(entry.read_text())
            if saved.get("folder") == str(folder) and saved.get("stats") == stats:
                return saved["digest"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    result = "sha256:" + digest.hexdigest()
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"folder": str(folder), "stats": stats, "digest": result}))
            os.replace(tmp, entry)
        except OSError:
            pass
    return result


def _fingerprint_cache_path(folder: Path) -> Path:
    root = Path(os.environ.get("PIPELINE_CACHE_DIR", Path.home() / ".cache" / "wav2vec2-pipeline"))
    return root / "fingerprints" / (hashlib.sha256(str(folder).encode()).hexdigest()[:32] + ".json")


def config_fingerprint(config: Any) -> str:
    """sha256 of the config as canonical JSON, without keys that describe the file, not the model."""
    d = {k: v for k, v in config.to_dict().items()
         if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# ---------------------------------------------------------------- default model


def default_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the embedded default model, named by the hash of its config files."""
    if cache_dir is None:
        cache_dir = os.environ.get("PIPELINE_CACHE_DIR", Path.home() / ".cache" / "wav2vec2-pipeline")
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        digest.update((DEFAULT_MODEL_SOURCE / name).read_bytes())
    return Path(cache_dir) / f"default-wav2vec2-{digest.hexdigest()[:12]}"


def ensure_default_model(folder: str | os.PathLike) -> Path:
    """Build the default model into `folder` if absent: random weights from torch.manual_seed(0).

    Built in a temporary sibling folder and renamed into place, so a reader never sees half a
    model; two builds give identical weights (tests/test_model.py).
    """
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = AutoConfig.from_pretrained(DEFAULT_MODEL_SOURCE, trust_remote_code=False)
        with _seeded(0):
            model = AutoModel.from_config(config, trust_remote_code=False)
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(DEFAULT_MODEL_SOURCE / "preprocessor_config.json", tmp / "preprocessor_config.json")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its build is identical
            if not (folder / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


# ---------------------------------------------------------------- batching and chunking


def length_buckets(lengths: Sequence[int], max_batch_samples: int, max_batch_size: int) -> list[list[int]]:
    """Group indices into batches, longest first, neighbours in length order together.

    Each batch holds at most `max_batch_size` items and at most `max_batch_samples` padded
    samples (items x longest); an item longer than `max_batch_samples` gets a batch of its own.
    """
    if max_batch_samples < 1 or max_batch_size < 1:
        raise ValueError(f"max_batch_samples ({max_batch_samples}) and max_batch_size ({max_batch_size}) must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > max_batch_samples):
            batches.append(current)
            current = []
        if not current:
            longest = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class ChunkWindow:
    """One window of a long waveform: samples [start_sample, start_sample + n_samples).

    Window frame j is global frame `first_frame + j`; frames [keep_start, keep_stop) of the window
    are kept, the rest is context.
    """

    start_sample: int
    n_samples: int
    first_frame: int
    keep_start: int
    keep_stop: int


def chunk_windows(n_samples: int, geometry: FrameGeometry, max_chunk_s: float | None,
                  context_s: float) -> list[ChunkWindow]:
    """Split a waveform longer than `max_chunk_s` into windows of that many frames plus context.

    Windows start at multiples of the hop, so their frames are global frames; the kept ranges
    tile [0, n_frames) exactly once.
    """
    n_frames = geometry.n_frames(n_samples)
    hop, rate = geometry.hop_samples, geometry.sample_rate_hz
    if not max_chunk_s or n_samples <= max_chunk_s * rate:
        return [ChunkWindow(0, n_samples, 0, 0, n_frames)]
    if context_s < 0:
        raise ValueError(f"context_s must be >= 0, got {context_s}")
    chunk_frames = max(1, int(max_chunk_s * rate) // hop)
    context_frames = int(round(context_s * rate / hop))
    windows = []
    for a in range(0, n_frames, chunk_frames):
        b = min(a + chunk_frames, n_frames)
        first, last = max(0, a - context_frames), min(n_frames, b + context_frames)
        start = first * hop
        # the last window keeps the trailing samples that do not make a frame, like the full pass
        stop = n_samples if last == n_frames else geometry.n_samples_for_frames(last)
        windows.append(ChunkWindow(start, stop - start, first, a - first, b - first))
    return windows


# ---------------------------------------------------------------- extraction


def normalize_waveform(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole utterance (eps 1e-7, like Wav2Vec2FeatureExtractor).

    Two float64 passes over pieces of STATS_PIECE_SAMPLES: memory beyond the float32 result is
    one piece (a float64 copy of a 2-hour recording would be 920 MB). A waveform of one piece
    gets numpy's whole-array `mean` and `var` bit for bit; longer ones differ by float64 rounding.
    """
    w = np.asarray(wave)
    if len(w) == 0:
        return np.zeros(0, np.float32)
    normalised = NormalisedWave(w)
    out = np.empty(len(w), np.float32)
    for a in range(0, len(w), STATS_PIECE_SAMPLES):
        out[a:a + STATS_PIECE_SAMPLES] = normalised[a:a + STATS_PIECE_SAMPLES]
    return out


class NormalisedWave:
    """A waveform normalised slice by slice on demand: `self[a:b]` equals `normalize_waveform(wave)[a:b]`
    bit for bit (same whole-utterance mean and scale, elementwise), without a full-length copy."""

    def __init__(self, wave: np.ndarray):
        self.wave = wave
        starts = range(0, len(wave), STATS_PIECE_SAMPLES)

        def piece(a: int) -> np.ndarray:
            return wave[a:a + STATS_PIECE_SAMPLES].astype(np.float64)

        self.mean = sum(np.add.reduce(piece(a)) for a in starts) / len(wave)
        var = sum(np.add.reduce(np.square(piece(a) - self.mean)) for a in starts) / len(wave)
        self.scale = np.sqrt(var + NORM_EPS)

    def __len__(self) -> int:
        return len(self.wave)

    def __getitem__(self, where: slice) -> np.ndarray:
        return ((self.wave[where].astype(np.float64) - self.mean) / self.scale).astype(np.float32)


def extract(loaded: LoadedModel, waveforms: Sequence[np.ndarray], layers: str | Sequence[int], *,
            max_chunk_s: float | None = 30.0, context_s: float = 2.0,
            max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
            max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> list[dict[int, np.ndarray]]:
    """Per waveform (float32, 16 kHz, mono), {layer: float32 array (n_frames x D)}.

    Exactly `geometry.n_frames(len(w))` rows each; row i is frame i. Equal to running the model
    on each waveform alone (relative 1e-5 in float32). Waveforms longer than `max_chunk_s` run
    in windows of `max_chunk_s` plus `context_s` on each side whose central frames are stitched:
    same rows and indices; layers -1 and 0 stay exact (input normalisation and group-norm
    statistics are the whole utterance's), transformer layers approximate (attention context is
    cut; ~1e-3 relative on random weights, see tests); they run one window at a time, exactly as
    `extract_windows` streams them. Waveforms shorter than the receptive field (400 samples) raise
    ValueError. Batches hold at most `max_batch_samples` padded samples (peak memory in the first
    conv layer ~ 3 x max_batch_samples / 5 x channels x 4 bytes: ~2 GB for the default 100 s with
    512 channels). Not thread-safe on one LoadedModel (it hooks its layers).
    """
    layers = parse_layers(layers, loaded.num_layers)
    geo = loaded.geometry
    waves = [_prepared(loaded, i, w) for i, w in enumerate(waveforms)]
    outputs = [{layer: np.empty((geo.n_frames(len(w)), loaded.layer_dim(layer)), np.float32) for layer in layers}
               for w in waves]
    whole: list[int] = []  # waveforms that fit one window: batched
    for u, w in enumerate(waves):
        windows = chunk_windows(len(w), geo, max_chunk_s, context_s)
        if len(windows) == 1:
            whole.append(u)
            continue
        for first, block in _window_blocks(loaded, w, layers, windows):
            for layer in layers:
                outputs[u][layer][first:first + len(block[layer])] = block[layer]
    for batch in length_buckets([len(waves[u]) for u in whole], max_batch_samples, max_batch_size):
        chosen = [whole[i] for i in batch]
        result = _forward_batch(loaded, [waves[u] for u in chosen], [None] * len(chosen), layers)
        for b, u in enumerate(chosen):
            for layer in layers:
                outputs[u][layer][:] = result[layer][b, :len(outputs[u][layer])]
    return outputs


def n_windows(loaded: LoadedModel, n_samples: int, max_chunk_s: float | None = 30.0) -> int:
    """How many windows `extract` / `extract_windows` run a waveform of `n_samples` in (1: it fits one)."""
    return len(chunk_windows(n_samples, loaded.geometry, max_chunk_s, 0.0))


def extract_windows(loaded: LoadedModel, wave: np.ndarray, layers: str | Sequence[int], *,
                    max_chunk_s: float | None = 30.0, context_s: float = 2.0
                    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """One waveform's layers, streamed: (first_frame, {layer: float32 array (n x D)}) per window.

    The blocks tile frames [0, geometry.n_frames(len(wave))) in order and equal the rows of
    `extract(loaded, [wave], layers)[0]` bit for bit (same windows, same computation). Memory
    beyond `wave`, whatever its length: the activations of the window being computed and of the block the
    caller still holds (~34 s x 50 frames x (512 + 13 x 768) x 4 bytes = 70 MB for base-size
    models, all layers); normalisation happens window by window (NormalisedWave), so there is no
    full-length normalised copy. The waveform is checked now; the model runs as blocks are taken.
    """
    layers = parse_layers(layers, loaded.num_layers)
    w = _checked(0, wave, loaded.geometry)
    if loaded.do_normalize:  # each window is normalised when it runs: no full-length normalised copy
        w = NormalisedWave(w)
    return _window_blocks(loaded, w, layers, chunk_windows(len(w), loaded.geometry, max_chunk_s, context_s))


def _prepared(loaded: LoadedModel, index: int, wave: np.ndarray) -> np.ndarray:
    """Checked float32 samples, normalised with whole-utterance statistics when the model wants it."""
    w = _checked(index, wave, loaded.geometry)
    return normalize_waveform(w) if loaded.do_normalize else w


def _window_blocks(loaded: LoadedModel, w: np.ndarray, layers: list[int],
                   windows: list[ChunkWindow]) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Run the windows of one prepared waveform one at a time; yield each one's kept rows."""
    stats = None  # the group-norm statistics of a waveform that fits one window are computed in its batch
    if len(windows) > 1 and _first_group_norm(loaded) is not None:
        stats = _conv0_stats(loaded, w)
    for win in windows:
        result = _forward_batch(loaded, [w[win.start_sample:win.start_sample + win.n_samples]], [stats], layers)
        yield (win.first_frame + win.keep_start,
               {layer: result.pop(layer)[0, win.keep_start:win.keep_stop] for layer in layers})


def _checked(index: int, wave: np.ndarray, geo: FrameGeometry) -> np.ndarray:
    w = np.asarray(wave)
    if w.ndim != 1:
        raise ValueError(f"waveform {index}: expected 1-D mono samples at {geo.sample_rate_hz} Hz, "
                         f"got shape {w.shape}; downmix before extraction")
    if len(w) < geo.receptive_field_samples:
        raise ValueError(f"waveform {index}: {len(w)} samples is shorter than one frame "
                         f"({geo.receptive_field_samples} samples); quarantine it as too_short first")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not all(np.isfinite(w[a:a + STATS_PIECE_SAMPLES]).all() for a in range(0, len(w), STATS_PIECE_SAMPLES)):
        raise ValueError(f"waveform {index}: contains NaN or Inf samples; quarantine it as non_finite first")
    return w


def _autocast(loaded: LoadedModel) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=loaded.device.type, dtype=DTYPES[loaded.dtype],
                          enabled=loaded.dtype != "float32")


@torch.inference_mode()
def _forward_batch(loaded: LoadedModel, waves: list[np.ndarray],
                   stats: list[tuple[torch.Tensor, torch.Tensor] | None],
                   layers: list[int]) -> dict[int, np.ndarray]:
    """{layer: float32 array (B x T_max x D)} for normalised waveforms; rows past a waveform's frames are padding."""
    model, dev = loaded.model, loaded.device
    n_frames = [loaded.geometry.n_frames(len(w)) for w in waves]
    wanted = [layer for layer in layers if layer >= 0]
    captured: dict[int, torch.Tensor] = {}
    with _autocast(loaded):
        feats = _conv_features(loaded, waves, stats, n_frames)  # (B, T, C)
        if LAYER_CNN in layers:
            captured[LAYER_CNN] = feats
        if wanted:
            mask = None
            if len(set(n_frames)) > 1:
                mask = torch.arange(feats.shape[1], device=dev)[None, :] < torch.tensor(n_frames, device=dev)[:, None]
            projected = model.feature_projection(feats)
            hidden = projected[0] if isinstance(projected, tuple) else projected  # HuBERT returns a tensor
            captured.update(_run_encoder(model.encoder, hidden, mask, wanted))
    return {layer: captured[layer].float().cpu().numpy() for layer in layers}


def _to_device(array: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(array)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _first_group_norm(loaded: LoadedModel) -> torch.nn.Module | None:
    """The first conv layer when it normalises over time (feat_extract_norm == "group"), else None."""
    if getattr(loaded.config, "feat_extract_norm", "layer") != "group":
        return None
    first = loaded.model.feature_extractor.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    if not (isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels):
        raise ValueError(f"{loaded.model_id}: feat_extract_norm is 'group' but the first conv layer has "
                         f"{type(norm).__name__}, not a per-channel GroupNorm; cannot batch it exactly")
    return first


def _conv_features(loaded: LoadedModel, waves: list[np.ndarray],
                   stats: list[tuple[torch.Tensor, torch.Tensor] | None], n_frames: list[int]) -> torch.Tensor:
    """Conv encoder output (B, T_max, C) of zero-padded waveforms, zero past each one's frames.

    Every conv is local: frame i reads samples [hop i, hop i + rf) only. The one non-local step
    is the first layer's GroupNorm in group-norm models (per channel, over all time steps), so it
    is computed here with each waveform's own statistics over its valid steps (or the given
    whole-utterance `stats` for a window of a long one): what the model does to it alone.
    """
    encoder, dev = loaded.model.feature_extractor, loaded.device
    padded = np.zeros((len(waves), max(len(w) for w in waves)), np.float32)
    for b, w in enumerate(waves):
        padded[b, :len(w)] = w
    x = _to_device(padded, dev)[:, None]
    first = _first_group_norm(loaded)
    if first is None:
        h = encoder(x[:, 0])
    else:
        h = first.conv(x).float()  # (B, C, L0); statistics in float32 even under autocast
        k, s = first.conv.kernel_size[0], first.conv.stride[0]
        norm = first.layer_norm
        for b, w in enumerate(waves):  # GroupNorm with C groups of 1 channel: per-channel mean, biased var
            if stats[b] is None:
                var, mean = torch.var_mean(h[b, :, :(len(w) - k) // s + 1], dim=-1, correction=0)
            else:
                mean, var = (t.to(dev) for t in stats[b])
            scale = torch.rsqrt(var + norm.eps) * norm.weight.float()
            h[b].mul_(scale[:, None]).add_((norm.bias.float() - mean * scale)[:, None])
        h = first.activation(h)
        for layer in encoder.conv_layers[1:]:
            h = layer(h)
    feats = h.transpose(1, 2)
    valid = torch.arange(feats.shape[1], device=dev)[None, :] < torch.tensor(n_frames, device=dev)[:, None]
    return feats * valid[:, :, None].to(feats.dtype)


@torch.inference_mode()
def _conv0_stats(loaded: LoadedModel, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-utterance GroupNorm statistics (mean, biased var per channel) of the first conv layer,
    from pieces of STATS_PIECE_SAMPLES (memory bounded) merged exactly (Chan et al.) in float64."""
    first = _first_group_norm(loaded)
    k, s = first.conv.kernel_size[0], first.conv.stride[0]
    n_steps = (len(wave) - k) // s + 1
    step = STATS_PIECE_SAMPLES // s
    count, mean, m2 = 0, 0.0, 0.0
    with _autocast(loaded):
        for j0 in range(0, n_steps, step):
            j1 = min(n_steps, j0 + step)
            seg = _to_device(np.ascontiguousarray(wave[j0 * s:(j1 - 1) * s + k]), loaded.device)
            piece_var, piece_mean = torch.var_mean(first.conv(seg[None, None])[0].float(), dim=-1, correction=0)
            n, piece_mean = j1 - j0, piece_mean.double()
            delta, total = piece_mean - mean, count + n
            mean = mean + delta * (n / total)
            m2 = m2 + piece_var.double() * n + delta.square() * (count * n / total)
            count = total
    return mean.float(), (m2 / count).float()


class _StopForward(Exception):
    """Raised by a hook once the last wanted layer has run: later layers are skipped."""


def _run_encoder(encoder: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
                 wanted: list[int]) -> dict[int, torch.Tensor]:
    """Run the model's own encoder.forward; hooks record layer 0 (input of the first layer) and
    the outputs of layers 1..N, as `hidden_states` reports them.

    The masking hooks on the positional conv layers zero padded frames before each of them: a
    no-op for the single conv of wav2vec2 / HuBERT / WavLM (the encoder already zeroes them), the
    fix for data2vec-audio's stack of 5 convs, where padding would otherwise leak into real frames.
    """
    captured: dict[int, torch.Tensor] = {}
    last = max(wanted)
    handles = []

    def keep_input(module, args, kwargs):
        captured[0] = args[0] if args else kwargs["hidden_states"]

    def keep_output(index):
        def hook(module, args, output):
            if index in wanted:
                captured[index] = output[0] if isinstance(output, tuple) else output
            if index == last:
                raise _StopForward
        return hook

    def zero_padding(module, args):
        return (args[0] * mask[:, None, :].to(args[0].dtype),) + tuple(args[1:])

    try:
        if mask is not None:  # data2vec-audio: a stack of (B, C, T) conv layers
            for conv_layer in getattr(encoder.pos_conv_embed, "layers", []):
                handles.append(conv_layer.register_forward_pre_hook(zero_padding))
        handles.append(encoder.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
        if last == 0:
            handles.append(encoder.layers[0].register_forward_pre_hook(_raise_stop))
        for i, layer in enumerate(encoder.layers, start=1):
            handles.append(layer.register_forward_hook(keep_output(i)))
        encoder(hidden, attention_mask=mask)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def _raise_stop(module, args):
    raise _StopForward
