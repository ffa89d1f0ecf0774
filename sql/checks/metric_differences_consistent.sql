-- Every paired difference of `metric_differences` is what it says: diff = value - other_value, an
-- interval whole or absent and low <= high, `significant` exactly when the interval excludes 0 (null
-- without interval), a null diff or interval only with its null_reason.
with final as (
    select *,
        case when value is not null and other_value is not null and abs(diff - (value - other_value)) > 1e-9
                 then 'diff is not value - other_value'
             when (ci_low is null) <> (ci_high is null) then 'half an interval'
             when ci_low > ci_high then 'interval reversed'
             when ci_low is null and significant is not null then 'significant without interval'
             when ci_low is not null and significant is distinct from (ci_low > 0 or ci_high < 0)
                 then 'significant does not match the interval'
             when (diff is null or ci_low is null) and null_reason is null then 'null without a reason'
        end as problem
    from metric_differences
)

select * from final where problem is not null
