"""`python -m pipeline COMMAND`: a thin shell over the library; flags are the functions' parameters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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


def _source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", help="hub id, Parquet file/folder, or corpus folder (not for --format embedded)")
    p.add_argument("--format", default="embedded", choices=["hf", "timit", "textgrid", "embedded"])
    p.add_argument("--split", help="one split only (default: every split)")
    p.add_argument("--id-column", default="id", help="hf: column(s) keying utterances; 'a,b' joins values with '/'")
    p.add_argument("--limit", type=int, help="only the first N items of the stream")
    p.add_argument("--run", required=True, help="name of the run (a folder-safe word)")
    p.add_argument("--overwrite", action="store_true", help="drop the run's old files and facts first")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.stages.extract import ExtractConfig  # its defaults are the flags' defaults

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("ingest", "stream a corpus into the utterances, segments and quarantine tables")
    _source_flags(p)
    p.add_argument("--shard-size", type=int, default=64, help="utterances per shard (default 64)")
    _common(p, writes=True)

    p = command("extract", "stream a corpus through a model into the frames table (every chosen layer)")
    _source_flags(p)
    p.add_argument("--model", default="default", help="hub id or local folder; 'default' = the embedded model")
    p.add_argument("--layers", default="all", help="'all', or e.g. '-1,0,6-12' (-1 = CNN output, 0 = transformer input)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored vectors")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="compute precision (auto: float32 on CPU, bfloat16 autocast on CUDA)")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--max-batch-samples", type=int, default=ExtractConfig.max_batch_samples,
                   help="padded audio samples per forward pass (default: 160 s)")
    p.add_argument("--max-batch-size", type=int, default=ExtractConfig.max_batch_size)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _common(p, writes=True)

    p = command("analyze", "per layer: k-means on a balanced sample, assign every frame, score against phone labels")
    p.add_argument("--run", required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--tier", default="phone",
                   help="labels to score against: phone, word, or a segments tier (ctc_greedy, ctc_char, …)")
    p.add_argument("--sample-per-label", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-iter", type=int, default=50)
    p.add_argument("--no-silence", action="store_true", help="also score without silence labels (sil, h#, pau, …)")
    p.add_argument("--batch-frames", type=int, default=65_536, help="frames per assignment batch (bounds memory)")
    p.add_argument("--by", help="also score per group of this utterance attribute (speaker, gender, dialect, …) "
                                "and run the cross-group test")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the linear phone probe")
    _common(p, writes=True)

    p = command("score", "clustering metrics for any two columns of a Parquet file or warehouse view")
    p.add_argument("table", help="a Parquet file (or glob) or the name of a warehouse view")
    p.add_argument("--labels", required=True, help="column of reference labels")
    p.add_argument("--clusters", required=True, help="column of cluster ids")
    p.add_argument("--where", help="SQL condition selecting rows, e.g. \"label_id != 0\"")
    p.add_argument("--format", default="table", choices=["table", "csv", "json", "ndjson"],
                   help="json: one array of rows; ndjson: one object per line")
    _common(p)

    p = command("reduce", "2-D PCA (fitted on every frame, streamed), t-SNE and UMAP (balanced sample) per layer")
    p.add_argument("--run", required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--methods", default="pca", help="comma list of pca, tsne, umap")
    p.add_argument("--n", type=int, default=5000, help="frames in the map (a balanced sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tier", default="phone", help="phone, word, or a segments tier (ctc_greedy, …)")
    p.add_argument("--pca-dims", type=int, default=50, help="PCA pre-reduction before t-SNE/UMAP")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    _common(p, writes=True)

    p = command("report", "one self-contained HTML report (+ PNGs) of one or more runs")
    p.add_argument("--runs", required=True, help="A or A,B")
    p.add_argument("--out", default="storage/report")
    p.add_argument("--k", type=int, help="clustering to show (default: the largest k analysed)")
    p.add_argument("--methods", default="pca,tsne,umap")
    p.add_argument("--map-points", type=int, default=2000)
    p.add_argument("--top-n", type=int, default=15, help="phones coloured by name; the rest are 'other'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tier", default="phone", help="phone, word, or a segments tier (ctc_greedy, …)")
    p.add_argument("--recompute", action="store_true",
                   help="run `reduce` for every map and `compare` for every pair first")
    p.add_argument("--compare-n", type=int,
                   help="compare the first run with each other run on N frames first, where missing or stale "
                        "(runs `compare`)")
    p.add_argument("--no-png", dest="png", action="store_false")
    _common(p, writes=True)

    p = command("labels", "CTC label tiers for a run's utterances from a …ForCTC checkpoint (greedy or forced)")
    p.add_argument("--run", required=True, help="the run to label; its corpus is reopened from its recorded source")
    p.add_argument("--model", required=True, help="a …ForCTC checkpoint (hub id or folder) with its tokenizer")
    p.add_argument("--source", default="greedy", choices=["greedy", "forced"],
                   help="greedy: tier ctc_greedy (argmax per frame); forced: tiers ctc_char, ctc_word (Viterbi of the text)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-chunk-s", type=float, default=30.0, help="longer utterances run in windows of this length")
    p.add_argument("--context-s", type=float, default=2.0, help="context on each side of a window")
    p.add_argument("--tier-name", help="write tier NAME (forced: NAME_char, NAME_word) instead of the default names, "
                                       "e.g. to keep a second model's labels beside the first's")
    p.add_argument("--overwrite-tier", action="store_true",
                   help="replace a tier another model (or other settings) made; default: refuse")
    _common(p, writes=True)

    p = command("transcripts", "cluster → label decoding with its CER, and per-frame transcriber disagreement")
    p.add_argument("--run", required=True)
    p.add_argument("--layers", default="all", help="layers whose clusterings are decoded: 'all' or a comma list")
    p.add_argument("--k", type=int, help="only this k (default: every k clustered)")
    p.add_argument("--references", default="text",
                   help="comma list of reference transcripts: 'text' (utterances.text) or utterance metadata keys")
    p.add_argument("--rule", default="gap", choices=["gap", "original"],
                   help="disagreement rule: ours (gap), or the original study's error_category (original)")
    p.add_argument("--empty-gap", default="next", choices=["next", "previous", "drop"],
                   help="where reference text between characters on adjacent frames is counted")
    p.add_argument("--tier", help="decode the clusterings trained for this tier only (default: every tier)")
    _common(p, writes=True)

    p = command("compare", "model against model: linear CKA between every layer pair, agreement of the clusterings")
    p.add_argument("--runs", required=True, help="A,B: two runs of the same corpus")
    p.add_argument("--n", type=int, default=5000, help="shared frames in the CKA sample (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, help="clusterings to compare (default: the largest k both runs analysed)")
    p.add_argument("--tier", help="clusterings of this tier only (default: every tier both runs clustered)")
    _common(p, writes=True)

    p = command("metadata", "attach utterance attributes (speaker, gender, age…) from CSV/TSV/Parquet or Kaldi utt2<key> files")
    p.add_argument("--run", required=True)
    p.add_argument("files", nargs="+", help="files with an utterance_id column, or Kaldi utt2<key> files")
    _common(p, writes=True)

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

    p = command("check", "verify committed files, each run's facts against its frames, and every sql/checks query")
    p.add_argument("--run", help="only this run (default: every run)")
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
    args = build_parser().parse_args(argv)
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
    handlers = {"ingest": _ingest, "extract": _extract, "sql": _sql, "analyze": _analyze, "score": _score,
                "reduce": _reduce, "report": _report, "labels": _labels, "transcripts": _transcripts,
                "compare": _compare, "demo-models": _demo_models,
                "metadata": _metadata, "views": _views, "check": _check}
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


def _check(args) -> int:
    from pipeline.stages.check import check

    report = check(args.warehouse, run=args.run)
    print(report.table())
    if not report.ok:
        print(f"error: {len(report.failures)} check(s) failed; each FAIL row names the run and an example: rerun "
              "the stage that wrote it (a damaged file), or --overwrite the run (facts that disagree)", file=sys.stderr)
    return 0 if report.ok else 1


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


def _ingest(args) -> int:
    from pipeline.stages.ingest import ingest
    from pipeline.corpus.sources import SourceSpec

    spec = SourceSpec(args.format, args.corpus, args.split, args.id_column, args.limit)
    _log_config("ingest", {**asdict(spec), "run": args.run, "warehouse": args.warehouse, "shard_size": args.shard_size})
    counts = ingest(spec, args.run, args.warehouse, args.shard_size, args.overwrite)
    print(
        f"ingest {args.run}: {counts['utterances']} utterances, {counts['segments']} segments, "
        f"{counts['quarantined']} quarantined, {counts['shards']} shards written "
        f"({counts['skipped_shards']} already committed)"
    )
    return 0


def _extract(args) -> int:
    from pipeline.stages.extract import ExtractConfig, extract

    fields = ExtractConfig.__dataclass_fields__
    cfg = ExtractConfig(**{k: v for k, v in vars(args).items() if k in fields})
    _log_config("extract", asdict(cfg))
    counts = extract(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(counts.summary())
    return 0


def _analyze(args) -> int:
    from pipeline.stages.analyze import AnalyzeConfig, analyze

    fields = AnalyzeConfig.__dataclass_fields__
    cfg = AnalyzeConfig(**{k: v for k, v in vars(args).items() if k in fields})
    _log_config("analyze", asdict(cfg))
    rows = analyze(cfg)
    import pyarrow as pa

    shown = ["layer", "ami", "nmi", "homogeneity", "completeness", "cluster_purity", "pnmi", "silhouette",
             "ami_shuffled_sample", "probe_balanced_accuracy", "kmeans_train_points"]
    _print(pa.Table.from_pylist([{k: r.get(k) for k in shown} for r in rows]), "table")
    if cfg.by:
        from pipeline.sql import query

        print(f"per {cfg.by} (table group_metrics):")
        _print(query(cfg.warehouse, "group_metrics_wide", {"run": cfg.run, "k": cfg.k, "tier": cfg.tier, "by": cfg.by}),
               "table")
    return 0


def _labels(args) -> int:
    from pipeline.stages.labels import labels

    params = {k: getattr(args, k) for k in ("run", "model", "warehouse", "source", "device", "max_chunk_s", "context_s",
                                          "tier_name", "overwrite_tier")}
    _log_config("labels", params)
    print(labels(**params).summary())
    return 0


def _transcripts(args) -> int:
    from pipeline.stages.transcripts import TranscriptsConfig, transcripts

    fields = TranscriptsConfig.__dataclass_fields__
    cfg = TranscriptsConfig(**{k: v for k, v in vars(args).items() if k in fields})
    _log_config("transcripts", asdict(cfg))
    written = transcripts(cfg)
    print("transcripts: " + ", ".join(f"{n} rows of {t}" for t, n in written.items()))
    return 0


def _metadata(args) -> int:
    from pipeline.stages.metadata import attach_metadata

    _log_config("metadata", {"run": args.run, "files": args.files, "warehouse": args.warehouse})
    counts = attach_metadata(args.run, args.files, args.warehouse)
    print(f"metadata {args.run}: {counts['rows']} attribute values from {counts['files']} file(s); "
          f"{counts['unknown_ids']} rows for utterances the run does not have were left out")
    return 0


def _demo_models(args) -> int:
    from pipeline.model.demo import train_demo_model

    _log_config("demo-models", {"warehouse": args.warehouse, "seed": args.seed})
    print(f"demo-models: {train_demo_model(args.warehouse, seed=args.seed)}")
    return 0


def _compare(args) -> int:
    from pipeline.stages.compare import compare

    params = {"runs": args.runs, "warehouse": args.warehouse, "n": args.n, "seed": args.seed, "k": args.k,
              "tier": args.tier}
    _log_config("compare", params)
    out = compare(**params)
    print(f"compare {out['run']} vs {out['other']}: {out['frames']} frames of {out['shared_utterances']} shared "
          f"utterances, k = {out['k']}, {out['total_s']:.1f} s")
    _print(out["cka"], "table", max_rows=20)
    if out["agreement"] is not None and out["agreement"].num_rows:
        _print(out["agreement"], "table", max_rows=60)
    return 0


def _reduce(args) -> int:
    from pipeline.stages.reduce import reduce_many

    keys = ["run", "layers", "methods", "warehouse", "n", "seed", "tier", "pca_dims", "perplexity", "n_neighbors",
            "min_dist"]
    params = {k: getattr(args, k) for k in keys}
    _log_config("reduce", params)
    for info in reduce_many(**params):
        print(json.dumps({k: v for k, v in info.items() if not isinstance(v, (list, dict))}, default=str))
    return 0


def _report(args) -> int:
    from pipeline.report import build_report

    params = {"runs": args.runs, "warehouse": args.warehouse, "out": args.out, "k": args.k,
              "methods": tuple(m for m in args.methods.split(",") if m), "map_points": args.map_points,
              "top_n": args.top_n, "seed": args.seed, "tier": args.tier, "recompute": args.recompute, "png": args.png,
              "compare_n": args.compare_n}
    _log_config("report", params)
    print(f"report: {build_report(**params)}")
    return 0


def _score(args) -> int:
    from pipeline.stages.score import score_table

    rows = score_table(args.table, args.labels, args.clusters, args.where, args.warehouse)
    import pyarrow as pa

    _print(pa.Table.from_pylist(rows), args.format)
    return 0


def _sql(args) -> int:
    from pipeline.sql import parse_param, query

    params = dict(parse_param(p) for p in args.param)
    fmt = _out_format(args.out, args.format) if args.out else args.format or "table"
    table = query(args.warehouse, args.query, params)
    if args.out:
        _write_out(table, args.out, fmt)
        print(f"sql: {table.num_rows} rows written to {args.out}")
    else:
        _print(table, fmt, args.max_rows)
    return 0


def _views(args) -> int:
    from pathlib import Path

    from pipeline.warehouse.views import views_sql, write_atomic
    from pipeline.warehouse import Warehouse

    if not Path(args.warehouse).is_dir():
        raise FileNotFoundError(f"no warehouse at {args.warehouse}: pass the folder given as --warehouse")
    script = views_sql(Warehouse(args.warehouse), args.run)
    if args.out:
        write_atomic(Path(args.out), script)
        print(f"views: written to {args.out}; run `duckdb -init {args.out}`")
    else:
        sys.stdout.write(script)
    return 0


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
        import polars as pl

        with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                       float_precision=4):
            print(pl.from_arrow(table))
