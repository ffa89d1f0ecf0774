-- The clusterings `analyze` has made for a run: one row per (layer, k).
-- params: $run
with final as (
    select distinct layer, k
    from clusters
    where run = $run
    order by layer, k
)

select * from final
