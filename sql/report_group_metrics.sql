-- Per-group scores of one analysis (`analyze --by $by`), long form for the report's "Variants and
-- groups" figure: per layer and group, the layer's clustering scored on the group's frames (ami),
-- and the cross-group test on the balanced sample: k-means fitted on this group alone
-- (ami_within) or on the other groups (ami_transfer); the phone probe trained on the group's
-- other speakers (probe_balanced_accuracy_within) or on the other groups (…_transfer). `score`
-- and `fit` name the two halves of the metric; `gap` = within − transfer for that score (large:
-- the structure found in the other groups does not carry over to this one).
-- params: $run, $k, $tier, $by
with scores as (
    select layer, group_value, metric, value, n
    from group_metrics
    where run = $run and k = $k and tier = $tier and attribute = $by
      and metric in ('ami', 'ami_within', 'ami_transfer', 'probe_balanced_accuracy_within',
                     'probe_balanced_accuracy_transfer')
),

named as (
    select
        *,
        case when metric like 'ami%' then 'ami' else 'probe balanced accuracy' end as score,
        case
            when metric like '%_within' then 'within'
            when metric like '%_transfer' then 'transfer'
            else 'layer clustering'
        end as fit
    from scores
),

gaps as (
    select
        layer, group_value, score,
        max(value) filter (where fit = 'within') - max(value) filter (where fit = 'transfer') as gap
    from named
    group by layer, group_value, score
),

final as (
    select n.layer, n.group_value, n.metric, n.score, n.fit, n.value, n.n, g.gap
    from named n
    join gaps g using (layer, group_value, score)
    order by n.layer, n.group_value, n.metric
)

select * from final
