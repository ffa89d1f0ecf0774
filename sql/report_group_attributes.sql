-- The attributes each chosen run was scored by (`analyze --by ATTRIBUTE`: speaker, gender,
-- dialect, …) for one clustering (k = $k) and label tier: one row per run and attribute, with its
-- number of groups and layers. The report draws one "Variants and groups" figure per row.
-- params: $runs (comma-separated run names), $k, $tier
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

scored as (
    select g.run, w.run_order, g.attribute, g.group_value, g.layer
    from group_metrics g
    join wanted_runs w using (run)
    where g.k = $k and g.tier = $tier
),

final as (
    select
        run, attribute, count(distinct group_value) as n_groups, count(distinct layer) as n_layers
    from scored
    group by run, attribute
    order by any_value(run_order), attribute
)

select * from final
