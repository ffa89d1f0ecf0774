-- Per-layer CCA measures of chosen runs (metrics rows with k = 0: projection-weighted CCA of the
-- layer against one-hot phones `cca_phone`, mean-pooled word segments against one-hot words
-- `cca_word`, the same frame's log-mel filterbank `cca_mel`), long form, with their 95 % intervals
-- and why a value or interval is null. Per run, layer and measure, the rows of $tier when there
-- are some, else those of the first tier by name (the mel and word targets do not depend on it).
-- Metrics files written before intervals existed lack those columns: they read as null here.
-- params: $runs (comma-separated run names), $metrics (comma-separated, e.g. 'cca_phone,cca_word,cca_mel'),
--         $tier, $subset
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
        null::varchar as null_reason
    where false
),

picked as (
    select
        m.run, w.run_order, m.layer, m.tier, m.metric, wm.metric_order, m.value, m.n,
        m.ci_low, m.ci_high, m.ci_method, m.n_resamples, m.null_reason
    from with_intervals m
    join wanted_runs w using (run)
    join wanted_metrics wm using (metric)
    where m.k = 0 and m.subset = $subset
    qualify row_number() over (partition by m.run, m.layer, m.metric order by (m.tier = $tier) desc, m.tier) = 1
),

final as (
    select * exclude (run_order, metric_order) from picked order by run_order, metric_order, layer
)

select * from final
