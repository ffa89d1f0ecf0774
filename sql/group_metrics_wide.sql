-- Per-group scores of one analysis (`analyze --by ATTRIBUTE`), one row per layer and group:
-- the layer's clustering scored on the group's frames (ami, …), and the cross-group test on the
-- balanced sample: k-means fitted on this group alone (ami_within) or on the other groups
-- (ami_transfer); the phone probe trained on the group's other speakers (…_within) or on the
-- other groups (…_transfer). A transfer score far below its within score: the structure does not
-- carry over between groups.
-- params: $run, $k, $tier, $by
with scores as (
    select layer, group_value, metric, value, n
    from group_metrics
    where run = $run and k = $k and tier = $tier and attribute = $by
),

final as (
    select
        layer,
        group_value,
        max(n) filter (where metric = 'ami') as frames,
        max(value) filter (where metric = 'ami') as ami,
        max(value) filter (where metric = 'ami_within') as ami_within,
        max(value) filter (where metric = 'ami_transfer') as ami_transfer,
        max(value) filter (where metric = 'probe_balanced_accuracy_within') as probe_within,
        max(value) filter (where metric = 'probe_balanced_accuracy_transfer') as probe_transfer
    from scores
    group by layer, group_value
    order by layer, group_value
)

select * from final
