-- Per layer, how much $run agrees with each of $others: the clusterings' agreement (AMI, NMI, ARI
-- of k-means with the same k trained for $tier, from `run_agreement`) and the linear CKA of the same layer in both
-- runs (the diagonal of `cka`, metric 'cka'). Long form, one row per other run, metric and layer;
-- other runs and metrics keep the order given.
-- params: $run, $others (comma-separated run names), $metrics (comma-separated, e.g. 'ami,nmi,ari,cka'), $tier
with wanted_others as (
    select
        unnest(string_split($others, ',')) as other,
        generate_subscripts(string_split($others, ','), 1) as other_order
),

wanted_metrics as (
    select
        unnest(string_split($metrics, ',')) as metric,
        generate_subscripts(string_split($metrics, ','), 1) as metric_order
),

clusterings as (
    select other, layer, k, metric, value, n from run_agreement where run = $run and tier = $tier
),

diagonal as (
    select other, layer, null::bigint as k, 'cka' as metric, value, n
    from cka
    where run = $run and layer = other_layer
),

picked as (
    select s.other, wo.other_order, s.layer, s.k, s.metric, wm.metric_order, s.value, s.n
    from (select * from clusterings union all select * from diagonal) s
    join wanted_others wo using (other)
    join wanted_metrics wm using (metric)
),

final as (
    select * exclude (other_order, metric_order) from picked order by other_order, metric_order, layer
)

select * from final
