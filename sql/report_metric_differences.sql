-- Paired differences of a metric (`metric_differences`: adjacent layers of one run from `analyze`,
-- one layer of two runs over the same frames from `compare`) for the report's table: per pair,
-- diff = value − other_value with its 95 % paired-bootstrap interval, the claim in the direction
-- of the difference ('layer 4 > layer 3', 'ft layer 2 > pre layer 2') with the difference and interval
-- in that direction (claim_diff = |diff|), and whether it holds at 95 % ('yes': the interval excludes
-- 0; 'no'; null with null_reason when there is no interval).
-- Per pair and metric, the rows of $tier when there are some, else those of the first tier by name.
-- Runs and metrics keep the order given; adjacent-layer pairs of a run come before its run pairs.
-- params: $runs (comma-separated run names), $metrics (comma-separated metric names), $tier
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

wanted_metrics as (
    select
        unnest(string_split($metrics, ',')) as metric,
        generate_subscripts(string_split($metrics, ','), 1) as metric_order
),

complete as (
    from metric_differences
    union all by name
    select
        null::double as value, null::double as other_value, null::double as ci_low, null::double as ci_high,
        null::boolean as significant, null::varchar as ci_method, null::bigint as n_resamples,
        null::varchar as null_reason
    where false
),

picked as (
    select d.*, w.run_order, wm.metric_order
    from complete d
    join wanted_runs w using (run)
    join wanted_metrics wm using (metric)
    qualify row_number() over (
        partition by d.run, d.other_run, d.layer, d.other_layer, d.k, d.metric order by (d.tier = $tier) desc, d.tier
    ) = 1
),

named as (
    select
        *,
        case when other_run = run then '' else run || ' ' end
            || case layer when -1 then 'CNN' when -2 then 'mel' else 'layer ' || layer end as this_name,
        case when other_run = run then '' else other_run || ' ' end
            || case other_layer when -1 then 'CNN' when -2 then 'mel' else 'layer ' || other_layer end as other_name
    from picked
),

final as (
    select
        run, other_run, case when other_run = run then 'layers' else 'runs' end as pair_kind,
        layer, other_layer, tier, k, metric, value, other_value, diff, ci_low, ci_high,
        case when diff < 0 then other_name || ' > ' || this_name else this_name || ' > ' || other_name end as claim,
        -- the difference and interval in the claim's direction (its left side minus its right side)
        abs(diff) as claim_diff,
        case when diff < 0 then -ci_high else ci_low end as claim_ci_low,
        case when diff < 0 then -ci_low else ci_high end as claim_ci_high,
        case when significant is null or ci_low is null then null when significant then 'yes' else 'no' end as at_95,
        ci_method, n_resamples, null_reason
    from named
    order by run_order, pair_kind, other_run, k, metric_order, layer, other_layer
)

select * from final
