"""What every writing command does around its work: hold the lock of each run it writes, then check
what it wrote, compact each run's commits into its manifest and refresh the warehouse's `views.sql`.

One place for the rule, used by the CLI (`python -m pipeline …`). A Python caller of a stage writes
the same way with `with writing_job(warehouse, "analyze", ["demo"]): analyze(cfg)`.

The end of a job costs in proportion to what it wrote, not to the warehouse: the check reads the
footers of the files this job committed, and the manifests are compacted from commit records.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

from pipeline.warehouse import Warehouse, keys
from pipeline.warehouse import lock as runlock

log = logging.getLogger(__name__)

# the kinds of commit stage (pipeline.warehouse.keys) each command writes
STAGES = {
    "ingest": (keys.INGEST,),
    "extract": (keys.EXTRACT,),
    "labels": (keys.LABELS,),
    "analyze": (keys.ANALYZE,),
    "reduce": (keys.REDUCE,),
    "compare": (keys.COMPARE,),
    "transcripts": (keys.TRANSCRIPTS,),
    "metadata": (keys.METADATA,),
    "report": (keys.REDUCE, keys.COMPARE),  # report --recompute / --compare-n runs reduce and compare
}


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


@contextlib.contextmanager
def writing_job(warehouse: str | os.PathLike | Warehouse, command: str, runs: Sequence[str], wait: bool = False,
                check: bool = True) -> Iterator[Warehouse]:
    """Hold every run's lock (sorted, so two jobs never wait on each other in a cycle) for the block;
    commits without the lock are refused meanwhile (lock.STRICT). On success, verify the files this
    job committed and each run's facts against its frames (`check.check_written`), compact each run's
    manifest, then rewrite `views.sql` at the warehouse root. RunLocked at once if another job holds a
    run (or wait). An object store URL is probed first: a missing bucket or no write permission is one
    error before anything is written."""
    from pipeline.stages.check import check_written

    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    wh.check_writable()
    strict, runlock.STRICT = runlock.STRICT, True
    first = len(wh.written)  # what this process committed before the job
    try:
        with contextlib.ExitStack() as stack:
            for run in sorted(set(runs)):
                stack.enter_context(wh.lock(run, command=runlock.command_line(), wait=wait))
            yield wh
            written = {(rec["run"], rec["stage"]) for rec in wh.written[first:]}
            if check:
                for run in sorted({r for r, _ in written}):
                    if wh.read_facts(run) is None:
                        continue  # nothing of this run was written (report of a run in another warehouse)
                    kinds = STAGES.get(command, ())
                    stages = {s for (r, s) in written if r == run and keys.kind(s) in kinds}
                    check_written(wh, run, stages, written=wh.written[first:])
            if _rank() == 0:
                with_commits = set(wh.commit_runs())
                for run in sorted(({r for r, _ in written} | set(runs)) & with_commits):
                    wh.compact(run)
                _refresh_views(wh)
    finally:
        runlock.STRICT = strict


def _refresh_views(wh: Warehouse) -> None:
    """`views.sql` at the warehouse root, for any DuckDB client (see pipeline/warehouse/views.py)."""
    from pipeline.warehouse.views import refresh

    refresh(wh)
