"""The CLI is generated from the stages' config dataclasses: every flag of the hand-written parser it replaced
keeps its option strings, dest, default, choices, nargs, required-ness and type."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.cli import add_config_flags, build_parser, config_from_args, main

# (option strings, dest, default, choices, nargs, required, type) of every argument of the hand-written parser
HAND_WRITTEN = {
    'ingest': [
        (('--corpus',), 'corpus', None, None, None, False, None),
        (('--format',), 'format', 'embedded', ('hf', 'timit', 'textgrid', 'embedded'), None, False, None),
        (('--split',), 'split', None, None, None, False, None),
        (('--id-column',), 'id_column', 'id', None, None, False, None),
        (('--limit',), 'limit', None, None, None, False, 'int'),
        (('--run',), 'run', None, None, None, True, None),
        (('--overwrite',), 'overwrite', False, None, 0, False, None),
        (('--shard-size',), 'shard_size', 64, None, None, False, 'int'),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'extract': [
        (('--corpus',), 'corpus', None, None, None, False, None),
        (('--format',), 'format', 'embedded', ('hf', 'timit', 'textgrid', 'embedded'), None, False, None),
        (('--split',), 'split', None, None, None, False, None),
        (('--id-column',), 'id_column', 'id', None, None, False, None),
        (('--limit',), 'limit', None, None, None, False, 'int'),
        (('--run',), 'run', None, None, None, True, None),
        (('--overwrite',), 'overwrite', False, None, 0, False, None),
        (('--model',), 'model', 'default', None, None, False, None),
        (('--layers',), 'layers', 'all', None, None, False, None),
        (('--device',), 'device', 'auto', ('auto', 'cpu', 'cuda'), None, False, None),
        (('--dtype',), 'dtype', 'float16', ('float16', 'float32'), None, False, None),
        (('--precision',), 'precision', 'auto', ('auto', 'float32', 'float16', 'bfloat16'), None, False, None),
        (('--shard-size',), 'shard_size', 64, None, None, False, 'int'),
        (('--max-batch-samples',), 'max_batch_samples', 2560000, None, None, False, 'int'),
        (('--max-batch-size',), 'max_batch_size', None, None, None, False, 'int'),  # was 32; now per device (issue 12)
        (('--no-progress',), 'progress', True, None, 0, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'analyze': [
        (('--run',), 'run', None, None, None, True, None),
        (('--layers',), 'layers', 'all', None, None, False, None),
        (('--k',), 'k', 50, None, None, False, 'int'),
        (('--tier',), 'tier', 'phone', None, None, False, None),
        (('--sample-per-label',), 'sample_per_label', 500, None, None, False, 'int'),
        (('--seed',), 'seed', 0, None, None, False, 'int'),
        (('--n-iter',), 'n_iter', 50, None, None, False, 'int'),
        (('--no-silence',), 'no_silence', False, None, 0, False, None),
        (('--batch-frames',), 'batch_frames', 65536, None, None, False, 'int'),
        (('--by',), 'by', None, None, None, False, None),
        (('--no-probe',), 'probe', True, None, 0, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'score': [
        ((), 'table', None, None, None, True, None),
        (('--labels',), 'labels', None, None, None, True, None),
        (('--clusters',), 'clusters', None, None, None, True, None),
        (('--where',), 'where', None, None, None, False, None),
        (('--format',), 'format', 'table', ('table', 'csv', 'json', 'ndjson'), None, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
    ],
    'reduce': [
        (('--run',), 'run', None, None, None, True, None),
        (('--layers',), 'layers', 'all', None, None, False, None),
        (('--methods',), 'methods', 'pca', None, None, False, None),
        (('--n',), 'n', 5000, None, None, False, 'int'),
        (('--seed',), 'seed', 0, None, None, False, 'int'),
        (('--tier',), 'tier', 'phone', None, None, False, None),
        (('--pca-dims',), 'pca_dims', 50, None, None, False, 'int'),
        (('--perplexity',), 'perplexity', 30.0, None, None, False, 'float'),
        (('--n-neighbors',), 'n_neighbors', 15, None, None, False, 'int'),
        (('--min-dist',), 'min_dist', 0.1, None, None, False, 'float'),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'report': [
        (('--runs',), 'runs', None, None, None, True, None),
        (('--out',), 'out', 'storage/report', None, None, False, None),
        (('--k',), 'k', None, None, None, False, 'int'),
        (('--methods',), 'methods', 'pca,tsne,umap', None, None, False, None),
        (('--map-points',), 'map_points', 2000, None, None, False, 'int'),
        (('--top-n',), 'top_n', 15, None, None, False, 'int'),
        (('--seed',), 'seed', 0, None, None, False, 'int'),
        (('--tier',), 'tier', 'phone', None, None, False, None),
        (('--recompute',), 'recompute', False, None, 0, False, None),
        (('--compare-n',), 'compare_n', None, None, None, False, 'int'),
        (('--no-png',), 'png', True, None, 0, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'labels': [
        (('--run',), 'run', None, None, None, True, None),
        (('--model',), 'model', None, None, None, True, None),
        (('--source',), 'source', 'greedy', ('greedy', 'forced'), None, False, None),
        (('--device',), 'device', 'auto', ('auto', 'cpu', 'cuda'), None, False, None),
        (('--max-chunk-s',), 'max_chunk_s', 30.0, None, None, False, 'float'),
        (('--context-s',), 'context_s', 2.0, None, None, False, 'float'),
        (('--tier-name',), 'tier_name', None, None, None, False, None),
        (('--overwrite-tier',), 'overwrite_tier', False, None, 0, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'transcripts': [
        (('--run',), 'run', None, None, None, True, None),
        (('--layers',), 'layers', 'all', None, None, False, None),
        (('--k',), 'k', None, None, None, False, 'int'),
        (('--references',), 'references', 'text', None, None, False, None),
        (('--rule',), 'rule', 'gap', ('gap', 'original'), None, False, None),
        (('--empty-gap',), 'empty_gap', 'next', ('next', 'previous', 'drop'), None, False, None),
        (('--tier',), 'tier', None, None, None, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'compare': [
        (('--runs',), 'runs', None, None, None, True, None),
        (('--n',), 'n', 5000, None, None, False, 'int'),
        (('--seed',), 'seed', 0, None, None, False, 'int'),
        (('--k',), 'k', None, None, None, False, 'int'),
        (('--tier',), 'tier', None, None, None, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'metadata': [
        (('--run',), 'run', None, None, None, True, None),
        ((), 'files', None, None, '+', True, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
        (('--wait',), 'wait', False, None, 0, False, None),
    ],
    'demo-models': [
        (('--seed',), 'seed', 0, None, None, False, 'int'),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
    ],
    'sql': [
        ((), 'query', None, None, None, True, None),
        (('--param',), 'param', [], None, None, False, None),
        (('--format',), 'format', None, ('table', 'csv', 'json', 'ndjson'), None, False, None),
        (('--out',), 'out', None, None, None, False, None),
        (('--max-rows',), 'max_rows', 100, None, None, False, 'int'),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
    ],
    'check': [
        (('--run',), 'run', None, None, None, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
    ],
    'views': [
        (('--run',), 'run', None, None, None, False, None),
        (('--out',), 'out', None, None, None, False, None),
        (('--warehouse',), 'warehouse', 'storage', None, None, False, None),
        (('-v', '--verbose'), 'verbose', False, None, 0, False, None),
    ],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _arguments(p: argparse.ArgumentParser) -> dict[str, tuple]:
    """dest → the argument's description (as in HAND_WRITTEN)."""
    return {a.dest: (tuple(a.option_strings), a.dest, a.default, tuple(a.choices) if a.choices else None, a.nargs,
                     a.required, getattr(a.type, "__name__", None))
            for a in p._actions if not isinstance(a, argparse._HelpAction)}


# flags added since the hand-written parser (issues 14 and 16): new, so no old script depends on them
ADDED = {
    "analyze": [
        (('--seeds',), 'seeds', 1, None, None, False, 'int'),
        (('--no-intervals',), 'intervals', True, None, 0, False, None),
        (('--n-resamples',), 'n_resamples', 1000, None, None, False, 'int'),
        (('--no-cca',), 'cca', True, None, 0, False, None),
        (('--cca-frames',), 'cca_frames', 10000, None, None, False, 'int'),
        (('--min-word-tokens',), 'min_word_tokens', 5, None, None, False, 'int'),
    ],
    "compare": [
        (('--n-resamples',), 'n_resamples', 1000, None, None, False, 'int'),
        (('--no-intervals',), 'intervals', True, None, 0, False, None),
    ],
    "extract": [(('--alignments',), 'alignments', None, None, None, False, None)],
    "ingest": [(('--alignments',), 'alignments', None, None, None, False, None)],
}


@pytest.mark.parametrize("command", sorted(HAND_WRITTEN))
def test_every_flag_survives(command: str) -> None:
    """Every flag of the hand-written parser keeps its name, default, choices and type; the only others are
    the ones ADDED names."""
    generated = _arguments(_subparsers(build_parser())[command])
    assert generated == {row[1]: row for row in HAND_WRITTEN[command] + ADDED.get(command, [])}


def test_no_command_lost_or_added() -> None:
    assert set(_subparsers(build_parser())) == set(HAND_WRITTEN)


@pytest.mark.parametrize("command", sorted(HAND_WRITTEN))
def test_help_shows_the_example(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m pipeline {command}" in out.split("example:")[1]


MINIMAL = {"ingest": ["--run", "r"], "extract": ["--run", "r"], "analyze": ["--run", "r"],
           "score": ["t.parquet", "--labels", "l", "--clusters", "c"], "reduce": ["--run", "r"],
           "report": ["--runs", "r"], "labels": ["--run", "r", "--model", "m"], "transcripts": ["--run", "r"],
           "compare": ["--runs", "a,b"], "metadata": ["--run", "r", "f.csv"], "check": []}


@pytest.mark.parametrize("command", sorted(cli.STAGES))
def test_unset_flags_give_the_config_defaults(command: str) -> None:
    """The parser's defaults are the config's: a stage run from the CLI and from Python agree."""
    assert set(MINIMAL) == set(cli.STAGES)
    args = build_parser().parse_args([command, *MINIMAL[command]])
    config = cli._stage(command)[1]
    cfg = config_from_args(args, config)
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(config)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert cfg == config(**given)


def test_switch_on_by_default_needs_its_off_flag() -> None:
    @dataclasses.dataclass
    class Bad:
        png: bool = True

    with pytest.raises(TypeError, match=r"Bad\.png.*metadata\['flag'\]"):
        add_config_flags(argparse.ArgumentParser(), Bad)


def test_field_without_a_flag_type_is_refused() -> None:
    @dataclasses.dataclass
    class Bad:
        sizes: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Bad\.sizes"):
        add_config_flags(argparse.ArgumentParser(), Bad)


def test_hidden_field_is_not_a_flag() -> None:
    sub = _subparsers(build_parser())["analyze"]
    assert "silhouette_points" not in {a.dest for a in sub._actions}


def test_stage_commands_print_their_summary(tmp_path: Path, capsys) -> None:
    """ingest and check through the generated parser: the same lines as the hand-written handlers printed."""
    wh = str(tmp_path / "wh")
    assert main(["ingest", "--run", "demo", "--warehouse", wh]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ingest demo: ") and "shards written (0 already committed)" in out
    assert main(["ingest", "--run", "demo", "--warehouse", wh]) == 0
    assert "0 shards written (" in capsys.readouterr().out
    assert main(["check", "--run", "demo", "--warehouse", wh]) == 0
    assert "passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(cli.STAGES))
def test_parser_for_one_command_has_its_full_flags(command: str) -> None:
    """main() builds the flags of the command it runs only; they are the full parser's."""
    alone = _arguments(_subparsers(build_parser(only=command))[command])
    assert alone == _arguments(_subparsers(build_parser())[command])
