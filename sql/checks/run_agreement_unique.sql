-- (run, other, layer, metric) is the key of run_agreement (one k per pair of runs), and AMI, NMI
-- and ARI are at most 1. The first statement stands in an empty `run_agreement` on a warehouse
-- without any comparison.
create view if not exists run_agreement as
select null::varchar as run, null::varchar as other, null::bigint as layer, null::bigint as k,
       null::varchar as metric, null::double as value, null::bigint as n
where false;

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
