-- Every clustering has k centroids numbered 0..k-1, whose sizes add up to its clustered frames.
-- The key is every column but cluster, size and vector (run, layer, k[, tier]).
with per_key as (
    select * exclude (cluster, size, vector), count(*) as n_rows, count(distinct cluster) as n_ids,
           min(cluster) as lo, max(cluster) as hi, sum(size) as n_sized, min(size) as smallest
    from centroids
    group by all
),

clustered as (
    select * exclude (utterance_id, frame, cluster, distance), count(*) as n_clustered
    from clusters
    group by all
),

final as (
    select p.*, c.n_clustered
    from per_key p
    natural left join clustered c
    where p.n_rows != p.k or p.n_ids != p.k or p.lo != 0 or p.hi != p.k - 1 or p.smallest < 0
       or p.n_sized != coalesce(c.n_clustered, 0)
)

select * from final
