-- The linear CKA matrix of two runs (every layer of $run × every layer of $other) as written by
-- `python -m pipeline compare --runs $run,$other`, for the report's heatmap.
-- value: biased HSIC estimator (Kornblith et al. 2019), value_debiased: unbiased HSIC (Song et al. 2012).
-- params: $run, $other
with stored as (
    select layer, other_layer, value, value_debiased, n
    from cka
    where run = $run and other = $other
),

final as (
    select * from stored order by layer, other_layer
)

select * from final
