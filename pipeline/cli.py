"""`python -m pipeline COMMAND`: a thin shell over the library; a stage's flags are its config's fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from dataclasses import asdict

log = logging.getLogger("pipeline")

EXAMPLES = {
    "ingest": "python -m pipeline ingest --format timit --corpus /data/TIMIT --run timit",
    "extract": "python -m pipeline extract --run demo            # embedded corpus, embedded model\n"
    "  python -m pipeline extract --format hf --corpus timit_asr --id-column speaker_id,id "
    "--model facebook/wav2vec2-base --run timit-base",
    "sql": "python -m pipeline sql phone_counts --param run=demo --format csv\n"
    "  python -m pipeline sql \"select * from frames where run = $run and layer = 2\" --param run=demo "
    "--out out/frames.parquet",
    "views": "python -m pipeline views --out views.sql && duckdb -init views.sql\n"
    "  (the warehouse keeps an up-to-date copy at storage/views.sql)",
    "analyze": "python -m pipeline analyze --run demo --k 50",
    "reduce": "python -m pipeline reduce --run demo --layers=-1,2,4 --methods pca,tsne,umap --n 5000",
    "report": "python -m pipeline report --runs demo --out storage/report",
    "score": "python -m pipeline score frames.parquet --labels label_id --clusters kmeans_fine_pca",
    "labels": "python -m pipeline labels --run fi-base --model ./finetuned_model --source greedy",
    "compare": "python -m pipeline compare --runs demo,demo-ctc",
    "demo-models": "python -m pipeline demo-models --warehouse storage",
    "metadata": "python -m pipeline metadata --run fi-base data/utt2gender data/speakers.csv",
    "check": "python -m pipeline check --run demo",
    "transcripts": "python -m pipeline transcripts --run fi-base --references text1,text2,text3,text4",
}


def _common(p: argparse.ArgumentParser, writes: bool = False) -> None:
    p.add_argument("--warehouse", default="storage", help="warehouse root folder (default: storage)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every quarantined item, show tracebacks")
    if writes:
        p.add_argument("--wait", action="store_true",
                       help="if another job holds the run's lock, wait for it instead of stopping at once")


# each stage command: its module (a config dataclass, `run(cfg) -> Result`), config class, help, whether it writes
STAGES = {
    "ingest": ("pipeline.stages.ingest", "IngestConfig",
               "stream a corpus into the utterances, segments and quarantine tables", True),
    "extract": ("pipeline.stages.extract", "ExtractConfig",
                "stream a corpus through a model into the frames table (every chosen layer)", True),
    "analyze": ("pipeline.stages.analyze", "AnalyzeConfig",
                "per layer: k-means on a balanced sample, assign every frame, score against phone labels", True),
    "score": ("pipeline.stages.score", "ScoreConfig",
              "clustering metrics for any two columns of a Parquet file or warehouse view", False),
    "reduce": ("pipeline.stages.reduce", "ReduceConfig",
               "2-D PCA (fitted on every frame, streamed), t-SNE and UMAP (balanced sample) per layer", True),
    "report": ("pipeline.report", "ReportConfig", "one self-contained HTML report (+ PNGs) of one or more runs", True),
    "labels": ("pipeline.stages.labels", "LabelsConfig",
               "CTC label tiers for a run's utterances from a …ForCTC checkpoint (greedy or forced)", True),
    "transcripts": ("pipeline.stages.transcripts", "TranscriptsConfig",
                    "cluster → label decoding with its CER, and per-frame transcriber disagreement", True),
    "compare": ("pipeline.stages.compare", "CompareConfig",
                "model against model: linear CKA between every layer pair, agreement of the clusterings", True),
    "metadata": ("pipeline.stages.metadata", "MetadataConfig",
                 "attach utterance attributes (speaker, gender, age…) from CSV/TSV/Parquet or Kaldi utt2<key> files",
                 True),
    "check": ("pipeline.stages.check", "CheckConfig",
              "verify committed files, each run's facts against its frames, and every sql/checks query", False),
}


def _stage(name: str):
    """(the stage's module, its config class)."""
    import importlib

    module = importlib.import_module(STAGES[name][0])
    return module, getattr(module, STAGES[name][1])


def add_config_flags(p: argparse.ArgumentParser, config: type) -> None:
    """One argument per field of a stage's config dataclass (`warehouse` is the common flag): `--kebab-case`,
    typed by the annotation (int, float, str; `X | None` = optional), required when the field has no default.
    A bool defaulting to False is a switch; one defaulting to True needs `metadata["flag"]` (e.g. --no-png),
    which turns it off. Field metadata: help, choices, positional (a `list[...]` positional takes 1 or more),
    cli=False to leave the field out of the command line."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        meta = f.metadata
        if f.name == "warehouse" or not meta.get("cli", True):
            continue
        kind, many = _flag_type(hints[f.name], f.name, config)
        kw = {"help": meta.get("help")}
        if "choices" in meta:
            kw["choices"] = list(meta["choices"])
        if kind in (int, float):
            kw["type"] = kind
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if meta.get("positional"):
            p.add_argument(f.name, **kw, **({"nargs": "+"} if many else {}))
        elif kind is bool and default is True:
            if "flag" not in meta:
                raise TypeError(f"{config.__name__}.{f.name}: a switch that is on by default needs "
                                "metadata['flag'], the option that turns it off (e.g. --no-png)")
            p.add_argument(meta["flag"], dest=f.name, action="store_false", help=kw["help"])
        elif kind is bool:
            p.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), dest=f.name, action="store_true",
                           help=kw["help"])
        elif default is dataclasses.MISSING:
            p.add_argument("--" + f.name.replace("_", "-"), required=True, **kw)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), default=default, **kw)


def _flag_type(hint, name: str, config: type) -> tuple[type, bool]:
    """(the scalar type of a config field, whether it is a list): `int | None` → (int, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    if hint not in (bool, int, float, str):
        raise TypeError(f"{config.__name__}.{name}: no command-line flag for type {hint!r}")
    return hint, False


def config_from_args(args: argparse.Namespace, config: type):
    """The stage's config from the parsed flags (the fields are the flags' dests)."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in vars(args).items() if k in names})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command; `only`: give flags to that stage command alone (importing a stage's module, for its
    config, can take seconds: `sql` and `--help` should not wait for all of them)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for name, (_, _, help_text, writes) in STAGES.items():
        p = command(name, help_text)
        if only is None or only == name:
            add_config_flags(p, _stage(name)[1])
            _common(p, writes=writes)

    p = command("demo-models", "train the offline demo pair's 'after' model: the default model fine-tuned with CTC")
    p.add_argument("--seed", type=int, default=0)
    _common(p)

    p = command("sql", "run a query from sql/ (by name or path) or literal SQL on the warehouse views")
    p.add_argument("query")
    p.add_argument("--param", action="append", default=[], help="name=value for $name in the query")
    p.add_argument("--format", choices=["table", "csv", "json", "ndjson"],
                   help="table (default on screen), csv, json (one array of rows, as `duckdb -json`), ndjson "
                        "(one object per line); with --out, the file's suffix decides")
    p.add_argument("--out", help="write the result to this file instead of the screen: "
                                 f"{', '.join(OUT_SUFFIXES)} (a missing folder is created)")
    p.add_argument("--max-rows", type=int, default=100, help="table format: rows shown")
    _common(p)

    p = command("views", "print (or write with --out) a SQL script that creates the warehouse's views in any "
                         "DuckDB client: committed files only, plus runs, run_geometry and frame_labels")
    p.add_argument("--run", help="only this run's files and facts (default: every run)")
    p.add_argument("--out", help="write the script to this file (atomically) instead of the screen")
    _common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A mistake (a missing folder, an unknown run, a bad query, an unreachable model) prints
    one line `error: …` and exits 1; `-v` adds the traceback."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=argv[0] if argv else "").parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # the libraries' retries and offline notices: our one error line says what matters
        for name in ("HF_HUB_VERBOSITY", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):
            os.environ.setdefault(name, "error")  # read when those libraries are imported, later
        for name in ("huggingface_hub", "transformers", "datasets", "urllib3", "filelock", "fsspec"):
            logging.getLogger(name).setLevel(logging.ERROR)
    handlers = {"sql": _sql, "demo-models": _demo_models, "views": _views}
    handlers.update({name: _run_stage for name in STAGES})
    try:
        runs = _written_runs(args)
        if runs is None:
            return handlers[args.command](args)
        from pipeline.jobs import writing_job

        with writing_job(args.warehouse, args.command, runs, wait=args.wait):
            return handlers[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted; committed shards are kept, rerun the same command to finish", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure ends in one line; -v shows where
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 1


def _written_runs(args) -> list[str] | None:
    """The runs a writing command writes (each held under its lock for the command); None: it writes none."""
    if args.command in ("ingest", "extract", "labels", "analyze", "reduce", "transcripts", "metadata"):
        return [args.run]
    if args.command == "compare":  # tables cka and run_agreement are written under the first run
        return [args.runs.split(",")[0]]
    if args.command == "report":  # reads only, unless asked to run reduce / compare first
        if args.recompute or args.compare_n is not None:
            return [r for r in args.runs.split(",") if r]
        return None
    return None


def error_line(err: BaseException) -> str:
    """One line for an error: the message of an error we raise (it says what to do), DuckDB's and the
    file system's own; any other exception is a bug and says so."""
    import duckdb

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (ValueError, LookupError, OSError, RuntimeError, duckdb.Error)) and not isinstance(
        err, (NotImplementedError, RecursionError)
    ):
        return text
    return f"internal error ({type(err).__name__}: {text}); rerun with -v for the traceback and report it"


def _log_config(name: str, config: dict) -> None:
    """The command's full configuration, with -v (reproducibility; the run's facts keep what matters)."""
    log.info("%s: %s", name, json.dumps(config, sort_keys=True, default=str))


def _run_stage(args) -> int:
    """A stage command: its config from the flags, `run(cfg)`, and what the result says."""
    module, config = _stage(args.command)
    cfg = config_from_args(args, config)
    _log_config(args.command, asdict(cfg))
    result = module.run(cfg)
    if args.command == "extract":
        if int(os.environ.get("RANK", 0)) == 0:  # torchrun: every rank gathers, one prints
            print(result.summary())
    elif args.command == "score" and cfg.format != "table":
        import pyarrow as pa

        _print(pa.Table.from_pylist(result.rows), cfg.format)
    elif args.command == "check":
        print(result.summary())
        if not result.ok:
            print(f"error: {len(result.failures)} check(s) failed; each FAIL row names the run and an example: "
                  "rerun the stage that wrote it (a damaged file), or --overwrite the run (facts that disagree)",
                  file=sys.stderr)
            return 1
    else:
        print(result.summary())
    return 0


def _demo_models(args) -> int:
    from pipeline.model.demo import train_demo_model

    _log_config("demo-models", {"warehouse": args.warehouse, "seed": args.seed})
    print(f"demo-models: {train_demo_model(args.warehouse, seed=args.seed)}")
    return 0


def _sql(args) -> int:
    from pipeline.sql import load_query, parse_param, query
    from pipeline.warehouse import Warehouse
    from pipeline.warehouse.fs import is_remote
    from pipeline.warehouse.scope import scope

    params = dict(parse_param(p) for p in args.param)
    fmt = _out_format(args.out, args.format) if args.out else args.format or "table"
    wh = _existing_warehouse(args.warehouse) if is_remote(args.warehouse) else Warehouse(args.warehouse)
    # views over the runs (and layers) the query provably reads, so that its cost does not grow with the rest
    runs, layers = scope(load_query(args.query), params)
    table = query(args.warehouse, args.query, params, con=wh.connect(runs=runs, layers=layers))
    if args.out:
        _write_out(table, args.out, fmt)
        print(f"sql: {table.num_rows} rows written to {args.out}")
    else:
        _print(table, fmt, args.max_rows)
    return 0


def _views(args) -> int:
    from pathlib import Path

    from pipeline.warehouse.views import views_sql, write_atomic

    script = views_sql(_existing_warehouse(args.warehouse), args.run)
    if args.out:
        write_atomic(Path(args.out), script)
        print(f"views: written to {args.out}; run `duckdb -init {args.out}`")
    else:
        sys.stdout.write(script)
    return 0


def _existing_warehouse(url: str):
    """The warehouse a reading command opens: a folder that exists, or an object store URL that answers."""
    from pathlib import Path

    from pipeline.warehouse import Warehouse
    from pipeline.warehouse.fs import StoreError, describe_error, is_remote

    if not is_remote(url):
        if not Path(url).is_dir():
            raise FileNotFoundError(f"no warehouse at {url}: pass the folder given as --warehouse")
        return Warehouse(url)
    wh = Warehouse(url)
    try:
        found = wh.runs() or wh.commit_runs()
    except Exception as err:  # noqa: BLE001 - one line naming the URL and what to check
        raise StoreError(describe_error(url, err)) from err
    if not found and not wh.store.exists("views.sql"):
        raise FileNotFoundError(f"no warehouse at {url}: nothing under that prefix has a run (_runs/ or _commits/); "
                                "check the URL (bucket and prefix) given as --warehouse")
    return wh


OUT_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}


def _out_format(out: str, fmt: str | None) -> str:
    """The format of an --out file: its suffix's; a --format that says otherwise is a mistake."""
    from pathlib import Path

    suffix = Path(out).suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: unknown suffix {suffix!r}; use one of {', '.join(OUT_SUFFIXES)}")
    if fmt is not None and fmt != OUT_SUFFIXES[suffix]:
        raise ValueError(f"--format {fmt} does not match --out {out} (a {OUT_SUFFIXES[suffix]} file): "
                         "leave out --format, or change the suffix")
    return OUT_SUFFIXES[suffix]


def _write_out(table, out: str, fmt: str) -> None:
    """The result into `out` (its folder created), written to a temp name and renamed: never half a file."""
    import uuid
    from pathlib import Path

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, compression="zstd")
        else:
            with open(tmp, "wb") as fh:
                _render(table, fmt, fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _render(table, fmt: str, fh) -> None:
    """csv, json (one array) or ndjson (one object per line) of `table` into the binary stream `fh`."""
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, fh)
        return
    lines = _json_rows(table)
    if fmt == "json":
        fh.write(("[" + ",\n".join(lines) + "]\n").encode())
    else:
        fh.write("".join(line + "\n" for line in lines).encode())


def _json_rows(table) -> list[str]:
    """Each row as a JSON object, serialised by DuckDB (every type it returns: maps, lists, decimals, dates).
    JSON has no NaN or infinity: a top-level float column's non-finite values become null."""
    import duckdb
    import pyarrow as pa

    def ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    columns = [f"case when isfinite({ident(f.name)}) then {ident(f.name)} end as {ident(f.name)}"
               if pa.types.is_floating(f.type) else ident(f.name) for f in table.schema]
    con = duckdb.connect()
    con.register("result", table)
    return [line for (line,) in con.execute(f"select to_json(r) from (select {', '.join(columns)} from result) r")
            .fetchall()]


def _print(table, fmt: str, max_rows: int = 100) -> None:
    if fmt in ("csv", "json", "ndjson"):
        sys.stdout.flush()
        _render(table, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        from pipeline.sql import table_text

        print(table_text(table, max_rows))
