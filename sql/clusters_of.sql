-- One clustering of one layer of a run (k-means with $k trained for tier $tier): every frame's cluster,
-- in utterance and frame order.
-- params: $run, $layer, $k, $tier
with final as (
    select utterance_id, frame, cluster
    from clusters
    where run = $run and layer = $layer and k = $k and tier = $tier
    order by utterance_id, frame
)

select * from final
