-- Every clustering (run, layer, k[, tier]) assigns exactly the frames of its layer: no cluster row
-- without its frame, and as many rows as the layer has frames (with clusters_unique_and_in_range,
-- each frame once). A clustering older than a resumed extract fails here: rerun `analyze`.
with clusterings as (
    select * exclude (utterance_id, frame, cluster, distance), count(*) as n_clustered
    from clusters
    group by all
),

layer_frames as (
    select run, layer, count(*) as n_frames
    from frames
    where run in (select distinct run from clusters)
    group by all
),

miscounted as (
    select c.*, coalesce(f.n_frames, 0) as n_frames, 'not every frame of the layer is clustered' as problem
    from clusterings c
    left join layer_frames f using (run, layer)
    where c.n_clustered != coalesce(f.n_frames, 0)
),

orphans as (
    select c.* exclude (distance), 'a cluster row without its frame' as problem
    from clusters c
    anti join frames f using (run, layer, utterance_id, frame)
),

final as (
    select * from miscounted
    union all by name
    select * from orphans
)

select * from final
