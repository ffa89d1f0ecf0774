-- Every kept utterance has floor((n - rf) / hop) + 1 frames in every extracted layer, numbered
-- 0..n-1, with rf and hop from the run's recorded geometry.
with geometry as (
    select run,
           (facts ->> '$.geometry.receptive_field_samples')::int as rf,
           (facts ->> '$.geometry.hop_samples')::int as hop
    from runs where facts ->> '$.geometry' is not null
),

expected as (
    select u.run, u.utterance_id, (u.n_samples - g.rf) // g.hop + 1 as n_frames
    from utterances u join geometry g using (run)
),

got as (
    select run, layer, utterance_id, count(*) as n_frames, min(frame) as first, max(frame) as last
    from frames group by all
),

final as (
    select e.run, e.utterance_id, g.layer, e.n_frames as expected, g.n_frames as got, g.first, g.last
    from expected e
    left join got g using (run, utterance_id)
    where g.n_frames is null or g.n_frames != e.n_frames or g.first != 0 or g.last != e.n_frames - 1
)

select * from final
