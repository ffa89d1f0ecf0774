-- (run, other, layer, other_layer) is the key of cka; the biased linear CKA lies in [0, 1] (NaN only
-- for a constant layer). The first statement stands in an empty `cka` on a warehouse without any
-- comparison (the views exist only for committed tables).
create view if not exists cka as
select null::varchar as run, null::varchar as other, null::bigint as layer, null::bigint as other_layer,
       null::double as value, null::double as value_debiased, null::bigint as n
where false;

with counted as (
    select run, other, layer, other_layer, count(*) as n_rows, min(value) as lo, max(value) as hi
    from cka
    group by all
),

final as (
    select * from counted
    where n_rows > 1 or (not isnan(lo) and lo < -1e-9) or (not isnan(hi) and hi > 1 + 1e-9)
)

select * from final
