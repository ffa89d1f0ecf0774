-- One majority label per non-empty cluster per scoring: every column but label, count, cluster_size
-- and share is the key (run, layer, k, tier, subset, cluster); the cluster id lies in [0, k);
-- 1 <= count <= cluster_size and share = count / cluster_size.
with duplicated as (
    select * exclude (label, count, cluster_size, share), count(*) as n_rows, 'duplicate key' as problem
    from cluster_labels
    group by all
    having count(*) > 1
),

inconsistent as (
    select *,
           case when cluster is null or cluster < 0 or cluster >= k then 'cluster outside [0, k)'
                when label is null then 'no label'
                when count is null or count < 1 or cluster_size is null or count > cluster_size
                    then 'count outside [1, cluster_size]'
                else 'share is not count / cluster_size' end as problem
    from cluster_labels
    where cluster is null or cluster < 0 or cluster >= k or label is null
       or count is null or count < 1 or cluster_size is null or count > cluster_size
       or share is null or abs(share - count / cluster_size) > 1e-9
),

final as (
    select * from duplicated
    union all by name
    select * from inconsistent
)

select * from final
