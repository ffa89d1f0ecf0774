-- Frames per label of one layer (every layer of a run has the same labels), for sizing a
-- balanced sample and for the report's label-frequency bars. Frames outside any interval are left out.
-- $tier: 'phone' or 'word' (the frames' own columns), or any tier of `segments` (e.g. ctc_greedy):
-- the label of the interval holding the frame's centre, start inclusive, end exclusive (the
-- centre from the run's recorded geometry, as sql/balanced_sample.sql computes it).
-- params: $run, $layer, $tier
with keys as (
    select f.utterance_id, f.phone, f.word, (g.hop * f.frame + g.rf / 2) / g.rate as centre_s
    from frames f
    left join run_geometry g on g.run = f.run  -- a run without geometry still has phone and word
    where f.run = $run and f.layer = $layer
),

tiered as (
    select case $tier when 'phone' then k.phone when 'word' then k.word else s.label end as label
    from keys k
    left join segments s
        on $tier not in ('phone', 'word')
        and s.run = $run and s.tier = $tier and s.utterance_id = k.utterance_id
        and k.centre_s >= s.start_s and k.centre_s < s.end_s
),

final as (
    select label, count(*) as n_frames
    from tiered
    where label is not null
    group by label
    order by n_frames desc, label
)

select * from final
