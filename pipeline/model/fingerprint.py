"""What identifies a checkpoint in a run's facts: its revision (hub commit, or a hash of its files)
and a hash of its config.

A run records both once and checks them on every append and resume, so the same name with other
weights or another config is refused instead of mixed into one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

WEIGHT_FILE_RE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt)$|.*\.safetensors\.index\.json$|.*\.bin\.index\.json$")


def user_cache_dir() -> Path:
    """Where built models and cached digests live: $PIPELINE_CACHE_DIR, else ~/.cache/wav2vec2-pipeline."""
    return Path(os.environ.get("PIPELINE_CACHE_DIR", Path.home() / ".cache" / "wav2vec2-pipeline"))


def revision(source: str | os.PathLike) -> str:
    """Hub commit hash when the files come from the hub cache, else a hash of the local files."""
    from transformers.utils.hub import cached_file, extract_commit_hash

    resolved = cached_file(str(source), "config.json")
    commit = extract_commit_hash(resolved, None)
    return commit if commit else folder_fingerprint(Path(resolved).parent)


def folder_fingerprint(folder: str | os.PathLike, cache: bool = True) -> str:
    """sha256 over config.json and the weight files (names and bytes), sorted by name.

    Hashing reads every byte of the weights (380 MB for a base-size checkpoint) in every process
    that loads them: every torchrun rank, every resume. With `cache`, the digest is kept under the
    user cache folder keyed by the folder's absolute path and each file's (size, mtime_ns,
    ctime_ns, inode), as git's index does; any change to a file's stat rehashes it. ctime matters:
    a file rewritten in place with its mtime restored (`os.utime`, `touch -d`, `cp -p`) keeps size,
    mtime and inode, but the kernel sets its ctime to now and nobody can set it back. The cache is
    only an optimisation: unreadable or unwritable, it is skipped.
    """
    folder = Path(folder).resolve()
    names = sorted(p.name for p in folder.iterdir() if p.is_file()
                   and (p.name == "config.json" or WEIGHT_FILE_RE.fullmatch(p.name)))
    stats = {name: [(st := (folder / name).stat()).st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
             for name in names}
    entry = _fingerprint_cache_path(folder) if cache else None
    if entry is not None:
        try:
            saved = json.loads(entry.read_text())
            if saved.get("folder") == str(folder) and saved.get("stats") == stats:
                return saved["digest"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    result = "sha256:" + digest.hexdigest()
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"folder": str(folder), "stats": stats, "digest": result}))
            os.replace(tmp, entry)
        except OSError:
            pass
    return result


def _fingerprint_cache_path(folder: Path) -> Path:
    return user_cache_dir() / "fingerprints" / (hashlib.sha256(str(folder).encode()).hexdigest()[:32] + ".json")


def config_fingerprint(config: Any) -> str:
    """sha256 of the config as canonical JSON, without keys that describe the file, not the model."""
    d = {k: v for k, v in config.to_dict().items()
         if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
