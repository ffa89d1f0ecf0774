-- The frame geometry of each run and the label of every frame on a tier: the one SQL definition,
-- run by every connection (pipeline.warehouse.views). The Python twin is
-- pipeline.algorithms.geometry.labels_at / FrameGeometry.frame_centres_s; tests/test_geometry.py
-- checks that both give the same labels, boundaries included.

-- frame i's centre is (hop * i + rf / 2) / rate seconds, in float64 as in Python
create or replace view run_geometry as select run,
    (facts -> 'geometry' ->> 'hop_samples')::double as hop,
    (facts -> 'geometry' ->> 'receptive_field_samples')::double as rf,
    (facts -> 'geometry' ->> 'sample_rate_hz')::double as rate
from runs where (facts -> 'geometry') is not null;

-- `phone` and `word` are columns of `frames`; any other tier (ctc_greedy, ctc_char, …) is the
-- `segments` interval holding the frame's centre, start inclusive, end exclusive. Filter on `layer`.
create or replace macro frame_labels(which_run, which_tier) as table
select
    f.layer, f.utterance_id, f.frame, f.time_s, f.phone, f.word,
    case which_tier when 'phone' then f.phone when 'word' then f.word else s.label end as label
from frames f
left join run_geometry g on g.run = f.run  -- a run without geometry still has phone and word
left join segments s
    on which_tier not in ('phone', 'word')
    and s.run = f.run and s.tier = which_tier and s.utterance_id = f.utterance_id
    and (g.hop * f.frame + g.rf / 2) / g.rate >= s.start_s and (g.hop * f.frame + g.rf / 2) / g.rate < s.end_s
where f.run = which_run;
