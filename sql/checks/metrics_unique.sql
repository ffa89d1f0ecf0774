-- One value per metric per scoring: the key of `metrics` is (run, layer, k, tier, subset, metric),
-- its other columns (value, n, the interval, null_reason, the seed spread) are the value; every column
-- of `group_metrics` but value and n is its key (run, layer, k, tier, attribute, group, metric).
with final as (
    select 'metrics' as source, run, layer, k, tier, subset, metric, count(*) as n_rows
    from metrics
    group by all
    having count(*) > 1
    union all by name
    select 'group_metrics' as source, * exclude (value, n), count(*) as n_rows
    from group_metrics
    group by all
    having count(*) > 1
)

select * from final
