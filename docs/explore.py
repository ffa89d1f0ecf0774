# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring one layer's frames: a SQL subset, a linear probe, the nearest frames, a chart
#
# A notebook as a percent-format script: VS Code and PyCharm run its `# %%` cells as they are, and
# Jupyter opens it as a notebook with jupytext (`pip install jupytext`, then *Open With → Notebook*,
# or `jupytext --to ipynb docs/explore.py`). `python docs/explore.py` runs it top to bottom, and so
# does the test suite (tests/test_explore.py) on a small embedded run.
#
# It needs a run with frames: `make extract` writes run `demo` into `storage/`. Point it elsewhere
# with `EXPLORE_WAREHOUSE`, `EXPLORE_RUN`, `EXPLORE_LAYER` (default: the run's last layer) and
# `EXPLORE_OUT` (where the chart goes; default `<warehouse>/explore`).

# %%
import os
import warnings
from pathlib import Path

import altair as alt
import faiss
import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline import open_warehouse
from pipeline import vectors
from pipeline.stages.analyze import SILENCE_LABELS

WAREHOUSE = os.environ.get("EXPLORE_WAREHOUSE", "storage")
RUN = os.environ.get("EXPLORE_RUN", "demo")
OUT = Path(os.environ.get("EXPLORE_OUT", Path(WAREHOUSE) / "explore"))

con = open_warehouse(WAREHOUSE)  # a DuckDB connection with the warehouse's views (committed files only)
con.sql("select layer, count(*) as frames, count(distinct utterance_id) as utterances from frames "
        "where run = $run group by layer order by layer", params={"run": RUN})

# %% [markdown]
# ## A subset in SQL
#
# One layer's labelled frames, without silence, at most `per_phone` frames of each phone (a
# seeded hash picks them) and only phones with at least `min_frames` frames, with the speaker
# from `utterances`. `vectors()` returns the other columns as an Arrow table and the vectors as
# one float32 matrix, row for row.

# %%
layers = [layer for (layer,) in con.execute("select distinct layer from frames where run = $run order by layer",
                                            {"run": RUN}).fetchall()]
assert layers, f"run {RUN!r} has no frames in {WAREHOUSE}: run `python -m pipeline extract --run {RUN}` first"
LAYER = int(os.environ.get("EXPLORE_LAYER", layers[-1]))

SUBSET = """
with labelled as (
    select f.utterance_id, f.frame, f.time_s, f.phone, u.speaker, f.vector,
           count(*) over (partition by f.phone) as phone_frames,
           row_number() over (partition by f.phone order by hash(f.utterance_id, f.frame)) as nth
    from frames f
    join utterances u on u.run = f.run and u.utterance_id = f.utterance_id
    where f.run = $run and f.layer = $layer and f.phone is not null and not list_contains($silence, f.phone)
)
select utterance_id, frame, time_s, phone, speaker, vector
from labelled
where phone_frames >= $min_frames and nth <= $per_phone
order by utterance_id, frame
"""
keys, X = vectors(con, SUBSET, {"run": RUN, "layer": LAYER, "silence": list(SILENCE_LABELS),
                                "min_frames": 10, "per_phone": 400})
frames = pl.from_arrow(keys)
print(f"layer {LAYER}: {X.shape[0]} frames × {X.shape[1]} dimensions, {frames['phone'].n_unique()} phones, "
      f"{frames['utterance_id'].n_unique()} utterances, {frames['speaker'].n_unique()} speakers")

# %% [markdown]
# ## A linear probe
#
# Logistic regression on standardised vectors, tested on held-out speakers (held-out utterances
# when the subset has fewer than four speakers, as a small test run does). Balanced accuracy is
# the mean recall over phones; chance is 1 / phones.

# %%
phones = frames["phone"].to_numpy()
groups = frames["speaker"] if frames["speaker"].n_unique() >= 4 else frames["utterance_id"]
train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=0).split(X, phones, groups))
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
probe.fit(X[train], phones[train])
predicted = probe.predict(X[test])
with warnings.catch_warnings():  # a phone predicted but absent from the test rows is an error, not news
    warnings.simplefilter("ignore", UserWarning)
    probe_balanced_accuracy = balanced_accuracy_score(phones[test], predicted)
chance = 1 / len(np.unique(phones[test]))
print(f"probe balanced accuracy {probe_balanced_accuracy:.3f} (chance {chance:.3f}) on {len(test)} held-out frames")
recall = (pl.DataFrame({"phone": phones[test], "correct": predicted == phones[test]})
          .group_by("phone").agg(probe_recall=pl.col("correct").mean()))

# %% [markdown]
# ## The frames nearest to this one
#
# A FAISS index of the layer's frames under cosine similarity (inner product of L2-normalised
# vectors). First the neighbours of one frame, with their utterance, time and phone; then, for
# every frame, the share of its `K` nearest frames *from other utterances* that carry its phone
# (a frame's own neighbours in time are near and mostly the same phone, so they are left out).

# %%
K = 10
unit = np.ascontiguousarray(X)
faiss.normalize_L2(unit)
index = faiss.IndexFlatIP(unit.shape[1])
index.add(unit)
similarity, neighbours = index.search(unit, min(len(unit), 8 * K))

query_row = frames.with_row_index().filter(pl.col("phone") == frames["phone"].mode()[0]).row(0, named=True)["index"]
nearest = frames[neighbours[query_row, :K].tolist()].select("utterance_id", "time_s", "phone").with_columns(
    similarity=similarity[query_row, :K])
print(f"nearest to {frames['utterance_id'][query_row]} at {frames['time_s'][query_row]:.2f} s "
      f"({frames['phone'][query_row]}):")
print(nearest)

utterance = frames["utterance_id"].to_numpy()
other_utterance = utterance[neighbours] != utterance[:, None]
used = other_utterance & (np.cumsum(other_utterance, axis=1) <= K)
knn_agreement = ((phones[neighbours] == phones[:, None]) & used).sum(1) / np.maximum(used.sum(1), 1)
print(f"{K}-NN phone agreement across utterances: {knn_agreement.mean():.3f}")

# %% [markdown]
# ## One custom chart
#
# Per phone: how well the probe reads it (recall on held-out frames) against how often its
# nearest frames share it; the point's size is the phone's frame count. Saved as a standalone HTML
# page that works offline (Vega inlined by vl-convert); a `.png` or `.svg` name renders an image.

# %%
per_phone = (frames.with_columns(knn_agreement=knn_agreement)
             .group_by("phone").agg(frames=pl.len(), knn_agreement=pl.col("knn_agreement").mean())
             .join(recall, on="phone", how="inner")
             .sort("phone"))
base = alt.Chart(per_phone).encode(
    x=alt.X("knn_agreement:Q", title=f"{K}-NN phone agreement (other utterances)", scale=alt.Scale(domain=[0, 1])),
    y=alt.Y("probe_recall:Q", title="probe recall (held-out frames)", scale=alt.Scale(domain=[0, 1])),
)
chart = (base.mark_circle(opacity=0.6).encode(size=alt.Size("frames:Q"), tooltip=["phone", "frames"])
         + base.mark_text(dy=-9, fontSize=10).encode(text="phone:N")).properties(
    title=f"run {RUN}, layer {LAYER}: probe against nearest neighbours, per phone", width=420, height=360)
OUT.mkdir(parents=True, exist_ok=True)
chart_path = OUT / f"probe_vs_knn_{RUN}_layer{LAYER}.html"
chart.save(chart_path, inline=True)
print(f"chart: {chart_path}")
chart
