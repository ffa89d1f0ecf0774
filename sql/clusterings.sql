-- The clusterings `analyze` has made for a run: one row per (layer, k, tier) (each tier's k-means is its own).
-- params: $run
with final as (
    select distinct layer, k, tier
    from clusters
    where run = $run
    order by layer, k, tier
)

select * from final
