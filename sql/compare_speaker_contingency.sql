-- Per layer that both runs clustered with the same $k for $tier, on every frame both runs assigned:
-- frames per (layer, speaker, label and cluster in $run, label and cluster in $other). Summed over
-- the other run's columns, each side is that run's per-speaker labels × clusters tables over the
-- same frames, which the paired speaker bootstrap of compare's `metric_differences` resamples.
-- Labels: each run's own label of the frame on $tier (macro frame_labels); null outside every interval.
-- params: $run, $other, $k, $tier
with a as (
    select c.layer, c.utterance_id, c.frame, c.cluster, l.label
    from clusters c
    left join frame_labels($run, $tier) l using (layer, utterance_id, frame)
    where c.run = $run and c.k = $k and c.tier = $tier
),

b as (
    select c.layer, c.utterance_id, c.frame, c.cluster, l.label
    from clusters c
    left join frame_labels($other, $tier) l using (layer, utterance_id, frame)
    where c.run = $other and c.k = $k and c.tier = $tier
),

final as (
    select
        a.layer, u.speaker, a.label, a.cluster, b.label as other_label, b.cluster as other_cluster,
        count(*) as n_frames
    from a
    join b using (layer, utterance_id, frame)
    join utterances u on u.run = $run and u.utterance_id = a.utterance_id
    group by all
    order by all
)

select * from final
