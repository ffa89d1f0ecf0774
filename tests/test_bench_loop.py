"""The benchmark yardsticks (bench/plain_loop.py, bench/gpu.py's CPU-safe parts) and the CPU heap setting."""

from __future__ import annotations

import platform

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench import gpu
from bench.data import embedded_rows


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import Wav2Vec2FeatureExtractor

    from pipeline.testing.models import save_tiny

    folder = save_tiny(tmp_path_factory.mktemp("tiny") / "m", "wav2vec2-group")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    return folder


def test_the_plain_loop_saves_what_the_pipeline_extracts(tiny_folder, tmp_path):
    from bench.plain_loop import plain_loop
    from bench.gpu import corpus_waves
    from pipeline.model import extract, load_model

    corpus = tmp_path / "c.parquet"
    rows = embedded_rows(3)
    pq.write_table(rows, corpus)
    result = plain_loop(tiny_folder, corpus, tmp_path / "npy")
    assert (result["utterances"], result["files"]) == (3, 3 * 4)  # layers -1, 0, 1, 2
    expected = extract(load_model(str(tiny_folder)), corpus_waves(corpus, 3), "all")
    for uid, want in zip(rows["id"].to_pylist(), expected):
        for layer, array in want.items():
            saved = np.load(tmp_path / "npy" / f"{uid.replace('/', '_')}.L{layer}.npy")
            assert saved.dtype == np.float16 and saved.shape == array.shape, (uid, layer)
            # both sides in float32, then float16: equal up to one float16 rounding step
            np.testing.assert_allclose(saved.astype(np.float32), array, rtol=2e-3, atol=2e-3)


def test_gpu_bench_without_cuda_says_so(monkeypatch, capsys):
    import torch

    from bench.common import QUIET_ENV

    for name, value in QUIET_ENV.items():  # main() sets them in os.environ: restored after the test
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", "/nonexistent/never-written.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA device") and "--precision-only" in err[0]


@pytest.mark.parametrize("argv, cuda, message", [
    (["--device", "cpu"], False, "--precision-only"),
    (["--utterances", "0"], True, "--utterances must be >= 1"),
    (["--precision-only", "--device", "cpu"], False, None),
    ([], True, None),
])
def test_gpu_bench_arguments(argv, cuda, message):
    problem = gpu.check_args(gpu.build_parser().parse_args(argv), cuda)
    assert problem == message if message is None else (problem.startswith("error: ") and message in problem)


def test_layer_errors_is_the_worst_frames_relative_distance():
    ref = [{0: np.array([[3.0, 4.0], [0.0, 0.0]], np.float32), 1: np.ones((1, 2), np.float32)},
           {0: np.array([[1.0, 0.0]], np.float32), 1: np.ones((2, 2), np.float32)}]
    other = [{0: np.array([[3.0, 4.5], [7.0, 7.0]], np.float32), 1: np.ones((1, 2), np.float32)},  # zero row skipped
             {0: np.array([[1.0, 0.2]], np.float32), 1: np.ones((2, 2), np.float32)}]
    errors = gpu.layer_errors(ref, other)
    assert errors[0] == pytest.approx(0.2) and errors[1] == 0.0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_cpu_extraction_keeps_freed_heap_for_the_next_batch():
    from pipeline.stages import extract

    assert extract._keep_freed_heap() is True
