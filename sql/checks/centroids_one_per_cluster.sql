-- Every clustering has k centroids numbered 0..k-1, whose sizes add up to its clustered frames.
-- The key is every column but cluster, size and vector (run, layer, k[, tier]).
create view if not exists centroids as
select null::varchar as run, null::bigint as layer, null::bigint as k, null::integer as cluster,
       null::bigint as size, null::float[] as vector
where false;

create view if not exists clusters as
select null::varchar as run, null::bigint as layer, null::bigint as k, null::varchar as utterance_id,
       null::integer as frame, null::integer as cluster, null::float as distance
where false;

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
