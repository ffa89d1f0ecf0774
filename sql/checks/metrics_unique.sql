-- One value per metric per scoring: every column of `metrics` and `group_metrics` but value and n
-- is their key (run, layer, k, tier, subset or attribute and group, metric).
with final as (
    select 'metrics' as source, * exclude (value, n), count(*) as n_rows
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
