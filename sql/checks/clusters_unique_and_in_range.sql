-- One cluster per frame per clustering: (run, layer, k[, tier], utterance, frame) is the key of
-- clusters (every column but cluster and distance, so a tier partition is part of it where it
-- exists), and each cluster id lies in [0, k).
with counted as (
    select * exclude (cluster, distance), count(*) as n_rows, min(cluster) as lo, max(cluster) as hi,
           count(cluster) as n_assigned
    from clusters
    group by all
),

final as (
    select * from counted
    where n_rows > 1 or n_assigned < n_rows or lo < 0 or hi >= k
)

select * from final
