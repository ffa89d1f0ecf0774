"""Several processes, one warehouse on S3: a killed run resumes to the rows of an uninterrupted one, and
two torchrun "nodes" on this machine (rendezvous on 127.0.0.1, gloo) give exactly the rows of one
process; a rerun with another world size resumes without redoing committed shards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testing import make_timit
from pipeline.warehouse import Warehouse

from test_s3 import bucket, s3_endpoint, s3_env  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_timit(tmp_path_factory.mktemp("timit") / "timit")


def _extract_args(corpus: Path, url: str) -> list[str]:
    return ["extract", "--format", "timit", "--corpus", str(corpus), "--run", "r", "--warehouse", url,
            "--shard-size", "2", "--layers", "0,1", "--no-progress"]


def _env(s3_env: dict, **extra: str) -> dict:
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PIPELINE_KILL_AT", None)
    return {**env, **extra}


def _frames(url: str) -> list[tuple]:
    return Warehouse(url).connect(runs=["r"]).execute(
        "select layer, utterance_id, frame, phone, vector from frames where run = 'r' order by all").fetchall()


def _extract(corpus: Path, url: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pipeline", *_extract_args(corpus, url)], env=env, capture_output=True,
                          text=True, timeout=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(corpus: Path, url: str, env: dict) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    torchrun = Path(PY).with_name("torchrun")
    procs = [subprocess.Popen([str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"job{port}",
                               "-m", "pipeline", "--", *_extract_args(corpus, url)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_killed_run_on_s3_resumes_to_the_same_rows(corpus, bucket, s3_env) -> None:  # noqa: F811
    base, url = f"s3://{bucket}/base", f"s3://{bucket}/killed"
    assert _extract(corpus, base, _env(s3_env)).returncode == 0
    killed = _extract(corpus, url, _env(s3_env, PIPELINE_KILL_AT="after_rename:3"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _extract(corpus, url, _env(s3_env))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already committed" in resumed.stdout
    assert _frames(url) == _frames(base)


@pytest.mark.slow
def test_two_nodes_on_s3_give_the_rows_of_one_and_resume_across_world_sizes(corpus, bucket, s3_env) -> None:  # noqa: F811
    base, url, mixed = f"s3://{bucket}/base", f"s3://{bucket}/nodes", f"s3://{bucket}/mixed"
    assert _extract(corpus, base, _env(s3_env)).returncode == 0
    for done in _two_nodes(corpus, url, _env(s3_env)):
        assert done.returncode == 0, done.stderr[-3000:]
    assert _frames(url) == _frames(base)
    ranks = {rec["rank"] for rec in Warehouse(url).commit_records("r", "extract").values()}
    assert ranks == {0, 1}
    # one process killed after its first commit (of 2 shards), then two nodes: the committed shard is not redone
    killed = _extract(corpus, mixed, _env(s3_env, PIPELINE_KILL_AT="before_commit:2"))
    assert killed.returncode == -signal.SIGKILL
    before = {key: rec["generation"] for key, rec in Warehouse(mixed).commit_records("r", "extract").items()}
    assert len(before) == 1
    for done in _two_nodes(corpus, mixed, _env(s3_env)):
        assert done.returncode == 0, done.stderr[-3000:]
    after = Warehouse(mixed).commit_records("r", "extract")
    assert all(after[key]["generation"] == gen and after[key]["rank"] == 0 for key, gen in before.items())
    assert _frames(mixed) == _frames(base)
