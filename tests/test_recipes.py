"""The README's recipes run as written: each `<!-- recipe: NAME -->` block of README.md is read from
the file (never copied here) and executed, command by command, against a miniature replica of the
corpus's real layout, with tiny random checkpoints in a local Hub cache under the real ids and the
Hub set offline (issue 16)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testing import save_tiny, save_tiny_ctc
from pipeline.testing.corpora import (L2ARCTIC_SPEAKERS, hub_cache_folder, make_common_voice, make_l2arctic,
                                      make_librispeech_hub, make_textgrid_corpus, make_timit_ldc, make_vctk)
from pipeline.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[1]
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\s*```\n(.*?)```", re.S)
# the checkpoints the recipes name → the tiny family standing in for each (a CTC head where the real one has it)
CHECKPOINTS = {
    "facebook/wav2vec2-base": "wav2vec2-group",
    "facebook/wav2vec2-base-960h": "ctc",
    "facebook/hubert-base-ls960": "hubert-group",
    "microsoft/wavlm-base-plus": "wavlm-group",
    "facebook/data2vec-audio-base": "data2vec-audio",
    "facebook/wav2vec2-xls-r-300m": "xls-r",
    "facebook/wav2vec2-base-fi-voxpopuli-v2": "wav2vec2-group",
    "Finnish-NLP/wav2vec2-base-fi-voxpopuli-v2-finetuned": "ctc",
}
# run in one process: imports and the Hub cache's offline settings once for every command
DRIVER = """
import json, shlex, sys, os
from pipeline.cli import main
codes = []
for cwd, line in json.loads(sys.argv[1]):
    os.chdir(cwd)
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "pipeline"], line
    codes.append([line, main(argv[3:] + ["--warehouse", "wh"])])
print(json.dumps(codes))
"""


def recipes() -> dict[str, list[str]]:
    """name → its command lines (continuations joined), as README.md has them now."""
    text = (ROOT / "README.md").read_text()
    out = {}
    for name, block in RECIPE.findall(text):
        out[name] = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return out


def test_the_readme_has_every_recipe_and_no_script_dataset():
    found = recipes()
    assert set(found) == {"librispeech", "timit", "l2arctic", "vctk", "common-voice", "checkpoints"}
    assert all(line.startswith("python -m pipeline ") for lines in found.values() for line in lines)
    readme = (ROOT / "README.md").read_text()
    assert "--corpus timit_asr" not in readme  # a loading script: datasets >= 4 refuses it
    models = {shlex.split(line)[shlex.split(line).index("--model") + 1]
              for lines in found.values() for line in lines if "--model" in line}
    assert models == set(CHECKPOINTS)


def _hub_models(hf_home: Path) -> None:
    from transformers import AutoModel

    from pipeline.testing.models import tiny_config

    for repo_id, family in CHECKPOINTS.items():
        folder = hub_cache_folder(hf_home, repo_id, kind="models")
        if family == "ctc":
            save_tiny_ctc(folder)
        elif family == "xls-r":  # stable layer norm and 24 layers, 32 wide
            config = tiny_config("wav2vec2-layer")
            config.num_hidden_layers = 24
            AutoModel.from_config(config).save_pretrained(folder)
        else:
            save_tiny(folder, family)


def _run(commands: list[tuple[Path, str]], hf_home: Path) -> None:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([[str(c), line] for c, line in commands])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert [code for _, code in codes] == [0] * len(commands), (codes, done.stderr[-3000:])


def _rows(where: Path, sql: str) -> list[tuple]:
    return Warehouse(where / "wh").connect().sql(sql).fetchall()


@pytest.mark.slow
def test_every_recipe_runs_as_written_on_a_replica(tmp_path):
    found, hf_home = recipes(), tmp_path / "hf"
    _hub_models(hf_home)
    upper, lower, corpora = tmp_path / "upper", tmp_path / "lower", tmp_path / "corpora"
    make_librispeech_hub(hf_home, corpora / "librispeech_mfa")
    make_timit_ldc(upper / "TIMIT")
    make_timit_ldc(lower / "TIMIT", lower=True)
    make_l2arctic(corpora / "l2arctic")
    make_vctk(corpora / "VCTK-Corpus", corpora / "vctk_mfa")
    make_common_voice(corpora / "cv-en", corpora / "cv_mfa")
    make_textgrid_corpus(upper / "finnish")
    commands = [(corpora, line) for name in ("librispeech", "l2arctic", "vctk", "common-voice") for line in found[name]]
    commands += [(upper, line) for line in found["timit"] + found["checkpoints"]]
    commands += [(lower, line) for line in found["timit"]]
    _run(commands, hf_home)

    # LibriSpeech: the MFA tiers joined by id, the utterance without a TextGrid quarantined and counted
    assert _rows(corpora, "select utterance_id, speaker from utterances where run = 'ls-base' order by 1") == [
        ("84-121123-0000", "84"), ("84-121123-0001", "84")]
    assert _rows(corpora, "select utterance_id, reason from quarantine where run = 'ls-base'") == [
        ("174-50561-0000", "missing_alignment")]
    phones = _rows(corpora, "select label from segments where run = 'ls-base' and utterance_id = '84-121123-0000' "
                            "and tier = 'phone' order by idx")
    assert [p for (p,) in phones] == ["sil", "HH", "AH0", "L", "OW1", "sp", "W", "ER1", "L", "D", "spn", "sil"]
    assert _rows(corpora, "select count(distinct phone) > 5 from frames where run = 'ls-base'") == [(True,)]
    # L2-ARCTIC: stems repeat across speakers, textgrid/ or annotation/, 44.1 kHz, L1 per speaker
    l2 = _rows(corpora, "select u.utterance_id, u.speaker, u.text, a.value from utterances u join utterance_attributes a "
                        "using (run, utterance_id) where run = 'l2-base' and a.key = 'l1' order by 1")
    assert [(u, s, v) for u, s, _, v in l2] == [(f"{s}/arctic_a000{k}", s, L2ARCTIC_SPEAKERS[s])
                                               for s in sorted(L2ARCTIC_SPEAKERS) for k in (1, 2)]
    assert {t for *_, t, _ in l2} == {"hello world"}
    # VCTK: accents from speaker-info.txt through utterances.speaker ('225' matches 'p225')
    accents = _rows(corpora, "select distinct u.speaker, a.value from utterances u join utterance_attributes a "
                             "using (run, utterance_id) where run = 'vctk-base' and key = 'accents' order by 1")
    assert accents == [("p225", "English"), ("p226", "English")]
    assert _rows(corpora, "select value from utterance_attributes where run = 'vctk-base' and key = 'region' "
                          "and utterance_id = 'p225/p225_001'") == [("Southern England",)]
    # Common Voice: keyed by clip, the MFA TextGrid joined without the .mp3, accents/gender/age kept
    cv = _rows(corpora, "select utterance_id, metadata['accents'], metadata['age'], text from utterances "
                        "where run = 'cv-base' order by 1")
    assert cv[0] == ("common_voice_en_1000.mp3", "Scottish English", "twenties", "Hello world.") and len(cv) == 3
    assert _rows(corpora, "select count(*) from segments where run = 'cv-base' and tier = 'phone'") == [(36,)]
    # TIMIT, LDC (upper case, SPHERE) and Kaggle (lower case, RIFF) copies: the same utterances and phones
    for where in (upper, lower):
        assert _rows(where, "select count(*), count(distinct speaker) from utterances where run = 'timit-base'") == [(5, 3)]
        assert _rows(where, "select count(*) from quarantine where run = 'timit-base'") == [(0,)]
    # checkpoints: every family extracted, the CTC head labelled, XLS-R's 24 layers
    layers = dict(_rows(upper, "select run, count(distinct layer) from frames group by run"))
    # `all`: the log-mel layer -2, the CNN output, the transformer input and the tiny models' 2 layers
    assert layers == {"base": 5, "base-960h": 5, "hubert": 5, "wavlm": 5, "data2vec": 5, "xlsr": 21,
                      "fi-base": 5, "fi-ft": 5, "timit-base": 5}
    assert _rows(upper, "select count(*) > 0 from segments where run = 'base' and tier = 'ctc_greedy'") == [(True,)]
