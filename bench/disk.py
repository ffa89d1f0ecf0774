"""`disk_bytes`: bytes of the frames files per (frame x layer) against 2 D (float16 vectors), for one
pipeline run per model at the default shard size (one file per layer), split into the vector
column, the other columns and the footers from the Parquet metadata; and the last layer's file
rewritten in memory with dictionary encoding of `vector` off (bytes and write time)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import Context, check, check_line, median, timed
from pipeline.warehouse import vectors


DISK_LAYERS = {"default": "all", "base": "-1,0,1"}  # base: the forward pass stops after layer 1


def disk_bytes(ctx: Context) -> dict:
    """Frames files of one pipeline run per model at the default shard size (one file per layer)."""
    from pipeline.stages.extract import ExtractConfig, extract

    corpus, _ = ctx.corpus(ctx.plan.disk_utterances)
    result: dict[str, Any] = {"utterances": ctx.plan.disk_utterances, "checks": [], "summary": []}
    for model, layers in DISK_LAYERS.items():
        cfg = ExtractConfig(run=f"disk_{model}", model=ctx.model_source(model), format="hf", corpus=str(corpus),
                            layers=layers, warehouse=str(ctx.warehouse), overwrite=True, progress=False)
        extract(cfg)
        run_dir = ctx.warehouse / "frames" / f"run={cfg.run}"
        r = {"layers_stored": layers, "shard_size": cfg.shard_size, **_frames_bytes(run_dir),
             "vector_dictionary_off": _dictionary_off(sorted(run_dir.glob("layer=*/part-*.parquet"))[-1])}
        result[model] = r
        result["checks"].append(check(f"{model}: bytes / (frames x layers x 2 D)", r["ratio_to_float16"], "<=", 1.05))
        other = sum(v for k, v in r["column_bytes_per_frame_layer"].items() if k != "vector")
        result["summary"].append(
            f"{model} (layers {layers}, shard size {cfg.shard_size}): {r['frames']} frames x {r['layers']} layers "
            f"in {r['files']} files, {r['bytes'] / 1e6:.2f} MB; {r['bytes_per_frame_layer']:.1f} B per frame and "
            f"layer against 2 D = {r['float16_bytes']:.1f} (ratio {r['ratio_to_float16']:.3f}): vector column "
            f"{r['column_bytes_per_frame_layer']['vector']:.1f} B, other columns {other:.1f} B, "
            f"footers {r['footer_bytes_per_frame_layer']:.2f} B")
        off = r["vector_dictionary_off"]
        result["summary"].append(
            f"  same file rewritten without dictionary encoding of `vector`: {off['bytes_ratio']:.3f}x the bytes, "
            f"{off['write_time_ratio']:.2f}x the write time")
    result["summary"] += [check_line(c) for c in result["checks"]]
    return result


def _dictionary_off(path: Path) -> dict:
    """Warehouse.write's Parquet settings on one frames file (pipeline.warehouse.vectors.writer_options:
    `vector` without a dictionary), and with the dictionary encoding of `vector` on (pyarrow's default)."""
    table = pq.read_table(path)
    kwargs = {**vectors.writer_options(table.schema), "row_group_size": 64 * 1024}
    sizes, walls = {}, {}
    for label, extra in (("dict", {"use_dictionary": True}), ("nodict", {})):
        for _ in range(3):
            buf = io.BytesIO()
            walls.setdefault(label, []).append(timed(pq.write_table, table, buf, **{**kwargs, **extra})[0])
            sizes[label] = buf.tell()
    return {"file": path.parent.name + "/" + path.name, "rows": table.num_rows,
            "bytes_ratio": sizes["nodict"] / sizes["dict"],
            "write_time_ratio": median(walls["nodict"]) / median(walls["dict"])}


def _frames_bytes(run_dir: Path) -> dict:
    files = sorted(run_dir.glob("layer=*/part-*.parquet"))
    total = rows_total = float16 = footer = 0
    columns: dict[str, int] = {}
    per_layer = {}
    for f in files:
        md = pq.read_metadata(f)
        dim = vectors.type_of(pq.read_schema(f).field("vector"))[0]
        size = f.stat().st_size
        chunks = 0
        for g in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(g).column(c)
                top = col.path_in_schema.split(".")[0]
                columns[top] = columns.get(top, 0) + col.total_compressed_size
                chunks += col.total_compressed_size
        total, rows_total, float16, footer = total + size, rows_total + md.num_rows, float16 + 2 * dim * md.num_rows, \
            footer + size - chunks
        layer = f.parent.name.split("=")[1]
        d = per_layer.setdefault(layer, {"dim": dim, "rows": 0, "bytes": 0})
        d["rows"] += md.num_rows
        d["bytes"] += size
    for d in per_layer.values():
        d["ratio_to_float16"] = d["bytes"] / (2 * d["dim"] * d["rows"])
    frames = rows_total // len(per_layer)
    return {"files": len(files), "layers": len(per_layer), "frames": frames, "bytes": total,
            "bytes_per_frame_layer": total / rows_total, "float16_bytes": float16 / rows_total,
            "ratio_to_float16": total / float16,
            "column_bytes_per_frame_layer": {k: v / rows_total for k, v in sorted(columns.items())},
            "footer_bytes_per_frame_layer": footer / rows_total, "per_layer": per_layer}
