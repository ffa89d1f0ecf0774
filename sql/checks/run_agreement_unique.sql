-- (run, other, layer, metric) is the key of run_agreement (one k per pair of runs), and AMI, NMI
-- and ARI are at most 1.
with counted as (
    select run, other, layer, metric, count(*) as n_rows, max(value) as hi
    from run_agreement
    group by all
),

final as (
    select * from counted
    where n_rows > 1 or (metric in ('ami', 'nmi', 'ari') and hi > 1 + 1e-9)
)

select * from final
