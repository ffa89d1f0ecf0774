-- Per-layer clustering metrics of chosen runs (long form: one row per run, layer, k, metric),
-- for the report's metric curves. Runs keep the order given.
-- params: $runs (comma-separated run names), $metrics (comma-separated metric names), $tier, $subset
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

wanted_metrics as (
    select unnest(string_split($metrics, ',')) as metric, generate_subscripts(string_split($metrics, ','), 1) as metric_order
),

picked as (
    select m.run, w.run_order, m.layer, m.k, m.tier, m.subset, m.metric, wm.metric_order, m.value, m.n
    from metrics m
    join wanted_runs w using (run)
    join wanted_metrics wm using (metric)
    where m.tier = $tier and m.subset = $subset
),

final as (
    select * from picked order by run_order, metric_order, k, layer
)

select * from final
