-- Per-layer clustering metrics of chosen runs (long form: one row per run, layer, k, metric),
-- for the report's metric curves, with each value's 95 % interval (ci_low, ci_high: bootstrap over
-- speakers, ci_method and n_resamples say which), why a value or interval is null (null_reason),
-- and the spread over k-means restarts (seed_sd over n_seeds). Runs keep the order given. Clusterings
-- only: the CCA rows (k = 0) are report_cca's.
-- Metrics files written before intervals existed lack those columns: they read as null here.
-- params: $runs (comma-separated run names), $metrics (comma-separated metric names), $tier, $subset
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

wanted_metrics as (
    select
        unnest(string_split($metrics, ',')) as metric,
        generate_subscripts(string_split($metrics, ','), 1) as metric_order
),

with_intervals as (
    from metrics
    union all by name
    select
        null::double as ci_low, null::double as ci_high, null::varchar as ci_method, null::bigint as n_resamples,
        null::varchar as null_reason, null::double as seed_sd, null::bigint as n_seeds
    where false
),

picked as (
    select
        m.run, w.run_order, m.layer, m.k, m.tier, m.subset, m.metric, wm.metric_order, m.value, m.n,
        m.ci_low, m.ci_high, m.ci_method, m.n_resamples, m.null_reason, m.seed_sd, m.n_seeds
    from with_intervals m
    join wanted_runs w using (run)
    join wanted_metrics wm using (metric)
    where m.tier = $tier and m.subset = $subset and m.k <> 0
),

final as (
    select * from picked order by run_order, metric_order, k, layer
)

select * from final
