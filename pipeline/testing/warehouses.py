"""Warehouses written without a model: extracted-looking frames in the layout `extract` commits, for
testing the stages downstream of it (analyze, reduce, compare, report, check) in milliseconds; and
readers that turn a warehouse's rows into plain Python for assertions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.warehouse import Warehouse, vectors
from pipeline.warehouse.schemas import UTTERANCES, frames_schema

SYNTHETIC_PHONES = ["sil", "a", "i:", "s", "t", "n", "l", "D"]  # espeak-ng mnemonics: classes from the embedded JSON
SYNTHETIC_SPEAKERS = ["spk-a", "spk-b", "spk-c"]


def make_frames_warehouse(root: Path, run: str = "syn", layers=(-1, 0, 1, 2), n_utts: int = 12, dim: int = 16,
                          seed: int = 0, vector_fn=None, n_shards: int = 2) -> Path:
    """A warehouse with extracted-looking frames (no model): utterances of phones 3–7 frames long,
    sil at both ends, two unlabelled frames at the end; vectors = phone centre (sharper with depth)
    + speaker offset (strong in the CNN layer) + noise, stored float16 like `extract` does.
    The labels do not depend on `seed` (two runs of one corpus); the vectors do."""
    rng = np.random.default_rng(seed)
    corpus_rng = np.random.default_rng(1234)
    wh = Warehouse(root)
    wh.ensure_facts(run, {"layers": list(layers), "model": {"num_layers": max(layers), "model_id": "synthetic"},
                          "dtype": "float16"})
    centres = {p: rng.standard_normal(dim) * 3 for p in SYNTHETIC_PHONES}
    speaker_offsets = {s: rng.standard_normal(dim) * 3 for s in SYNTHETIC_SPEAKERS}
    utts = []
    for u in range(n_utts):
        labels = ["sil"] * 4
        for _ in range(6):
            labels += [SYNTHETIC_PHONES[1 + corpus_rng.integers(len(SYNTHETIC_PHONES) - 1)]] * int(corpus_rng.integers(3, 8))
        labels += ["sil"] * 4 + [None, None]
        utts.append((f"{SYNTHETIC_SPEAKERS[u % 3]}/{u:03d}", SYNTHETIC_SPEAKERS[u % 3], labels))
    shards = np.array_split(np.arange(n_utts), n_shards)
    for shard, idx in enumerate(shards):
        chosen = [utts[i] for i in idx]
        corpus = pa.Table.from_pylist([{
            "utterance_id": uid, "corpus": "synthetic", "speaker": spk, "split": "train",
            "n_samples": 320 * len(lab) + 80, "sample_rate_hz": 16000, "source_sample_rate_hz": 16000,
            "source_channels": 1, "duration_s": (320 * len(lab) + 80) / 16000, "text": "",
            "metadata": [("gender", "female" if spk == "spk-b" else "male"), ("split", "train")],
        } for uid, spk, lab in chosen], schema=UTTERANCES)
        files = [wh.write("utterances", corpus, run, shard)]
        for layer in layers:
            rows = []
            for uid, spk, lab in chosen:
                for f, p in enumerate(lab):
                    if vector_fn is not None:
                        v = vector_fn(uid, f, layer)
                    else:
                        sharp = 1.0 + layer + 1  # deeper layers separate phones better
                        v = (centres[p or "sil"] * sharp + speaker_offsets[spk] * (3 if layer == -1 else 0.5)
                             + rng.standard_normal(dim))
                    rows.append({"utterance_id": uid, "frame": f, "time_s": (320 * f + 200) / 16000, "phone": p,
                                 "word": None if p in (None, "sil") else "w", "vector": np.asarray(v, np.float16)})
            matrix = np.stack([row.pop("vector") for row in rows]) if rows else np.zeros((0, dim), np.float16)
            schema = frames_schema(dim, "float16")
            table = pa.Table.from_pylist(rows, schema=schema.remove(schema.get_field_index("vector")))
            table = table.append_column(schema.field("vector"), vectors.encode(matrix, "float16"))
            files.append(wh.write("frames", table, run, shard, layer=layer))
        wh.commit(run, "extract", shard, files)
    return root


def segments_of(wh: Path, tier: str, run: str = "r") -> dict[str, list[tuple]]:
    """A tier's segments per utterance, in order: uid -> [(idx, label, start_s, end_s, source), ...]."""
    rows = Warehouse(wh).connect().sql(
        "select utterance_id, idx, label, start_s, end_s, source from segments where run = $run and tier = $tier "
        "order by utterance_id, idx", params={"run": run, "tier": tier}).fetchall()
    out: dict[str, list[tuple]] = {}
    for uid, *rest in rows:
        out.setdefault(uid, []).append(tuple(rest))
    return out
