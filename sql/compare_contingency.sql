-- Cluster × cluster contingency of two runs' k-means clusterings with the same $k and $tier, per layer that
-- both runs clustered, on every frame both runs assigned: frames per (layer, cluster of $run,
-- cluster of $other). pipeline.compare scores each layer's table (AMI, NMI, ARI, …).
-- params: $run, $other, $k, $tier
with a as (
    select layer, utterance_id, frame, cluster from clusters where run = $run and k = $k and tier = $tier
),

b as (
    select layer, utterance_id, frame, cluster from clusters where run = $other and k = $k and tier = $tier
),

final as (
    select a.layer, a.cluster, b.cluster as other_cluster, count(*) as n_frames
    from a join b using (layer, utterance_id, frame)
    group by all
    order by all
)

select * from final
