"""The plain loop: what a user writes instead of `python -m pipeline extract`, the yardstick of
`extract_vs_loop` (bench/loop.py) and of the CUDA bench (bench/gpu.py).

transformers' `AutoModel.from_pretrained(folder)`, the folder's own feature extractor for the
input normalisation, one utterance at a time, `output_hidden_states=True`; the conv output (the
pipeline's layer -1: what `model.feature_extractor` returns, kept by a forward hook during the
same call; `extract_features` is it after the projection's layer norm) and every hidden state
(layers 0..N) saved as float16 `.npy`, one file per utterance and layer. The audio is read from the same Hub-style
Parquet corpus (`audio.bytes`) with soundfile, as the pipeline reads it.

    python -m bench.plain_loop --model FOLDER --corpus corpus.parquet --out DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path


def plain_loop(model_folder: str | Path, corpus: str | Path, out: str | Path, device: str = "cpu",
               limit: int | None = None, precision: str = "float32") -> dict:
    """Run the loop; returns {"utterances", "audio_s", "files", "bytes", "wall_s", "load_s"}.

    `precision`: "float32", or "bfloat16" / "float16" autocast (what a user adds on a GPU)."""
    t0 = time.perf_counter()
    import numpy as np
    import pyarrow.parquet as pq
    import soundfile as sf
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(model_folder).eval().to(device)
    fe = AutoFeatureExtractor.from_pretrained(model_folder)
    load_s = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = files = size = 0
    audio_s = 0.0
    pf = pq.ParquetFile(corpus)
    cast = torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, precision),
                          enabled=precision != "float32")
    # the conv output as the model computes it (`extract_features` is it after the projection's layer norm)
    conv: list = [None]
    model.feature_extractor.register_forward_hook(lambda module, args, output: conv.__setitem__(0, output))
    for batch in pf.iter_batches(columns=["id", "audio"], batch_size=64):
        for uid, audio in zip(batch.column("id").to_pylist(), batch.column("audio").to_pylist()):
            if limit is not None and n >= limit:
                break
            wave, rate = sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
            audio_s += len(wave) / rate
            inputs = fe(wave, sampling_rate=rate, return_tensors="pt")
            with torch.inference_mode(), cast:
                o = model(inputs.input_values.to(device), output_hidden_states=True)
            layers = {-1: conv[0].transpose(1, 2), **dict(enumerate(o.hidden_states))}
            name = uid.replace("/", "_")
            for layer, t in layers.items():
                a = t[0].to(torch.float16).cpu().numpy()
                path = out / f"{name}.L{layer}.npy"
                np.save(path, a)
                files += 1
                size += a.nbytes
            n += 1
    return {"utterances": n, "audio_s": audio_s, "files": files, "bytes": size,
            "wall_s": time.perf_counter() - t0, "load_s": load_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plain_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (save_pretrained)")
    p.add_argument("--corpus", required=True, help="Hub-style Parquet file (id, audio.bytes)")
    p.add_argument("--out", required=True, help="folder for the .npy files")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)
    result = plain_loop(args.model, args.corpus, args.out, args.device, args.limit, args.precision)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
