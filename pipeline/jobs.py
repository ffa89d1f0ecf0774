"""What every writing command does around its work: hold the lock of each run it writes, then check
what it wrote and refresh the warehouse's `views.sql`.

One place for the rule, used by the CLI (`python -m pipeline …`). A Python caller of a stage writes
the same way with `with writing_job(warehouse, "analyze", ["demo"]): analyze(cfg)`.
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


@contextlib.contextmanager
def writing_job(warehouse: str | os.PathLike, command: str, runs: Sequence[str], wait: bool = False,
                check: bool = True) -> Iterator[Warehouse]:
    """Hold every run's lock (sorted, so two jobs never wait on each other in a cycle) for the block;
    commits without the lock are refused meanwhile (lock.STRICT). On success, verify the files of the
    command's stages and each run's facts against its frames (`check.check_written`), then rewrite
    `views.sql` at the warehouse root. RunLocked at once if another job holds a run (or wait)."""
    from pipeline.stages.check import check_written

    wh = Warehouse(warehouse)
    strict, runlock.STRICT = runlock.STRICT, True
    try:
        with contextlib.ExitStack() as stack:
            for run in sorted(set(runs)):
                stack.enter_context(wh.lock(run, command=runlock.command_line(), wait=wait))
            yield wh
            if check and int(os.environ.get("RANK", 0)) == 0:
                for run in sorted(set(runs)):
                    if wh.read_facts(run) is None:
                        continue  # nothing of this run was written (report of a run in another warehouse)
                    kinds = STAGES.get(command, ())
                    stages = {s for (_, s, _) in wh.commit_records(run) if keys.kind(s) in kinds}
                    check_written(wh, run, stages)
            if int(os.environ.get("RANK", 0)) == 0:
                _refresh_views(wh)
    finally:
        runlock.STRICT = strict


def _refresh_views(wh: Warehouse) -> None:
    """`views.sql` at the warehouse root, for any DuckDB client (see pipeline/warehouse/views.py)."""
    from pipeline.warehouse.views import refresh

    refresh(wh)
