-- One clustering of one layer of a run: every frame's cluster, in utterance and frame order.
-- params: $run, $layer, $k
with final as (
    select utterance_id, frame, cluster
    from clusters
    where run = $run and layer = $layer and k = $k
    order by utterance_id, frame
)

select * from final
