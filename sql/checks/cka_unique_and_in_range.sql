-- (run, other, layer, other_layer) is the key of cka; the biased linear CKA lies in [0, 1] (NaN only
-- for a constant layer).
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
