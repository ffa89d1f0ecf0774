-- One value per metric per scoring: every column of `metrics` and `group_metrics` but value and n
-- is their key (run, layer, k, tier, subset or attribute and group, metric).
create view if not exists metrics as
select null::varchar as run, null::bigint as layer, null::bigint as k, null::varchar as tier,
       null::varchar as subset, null::varchar as metric, null::double as value, null::bigint as n
where false;

create view if not exists group_metrics as
select null::varchar as run, null::bigint as layer, null::bigint as k, null::varchar as tier,
       null::varchar as attribute, null::varchar as group_value, null::varchar as metric,
       null::double as value, null::bigint as n
where false;

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
