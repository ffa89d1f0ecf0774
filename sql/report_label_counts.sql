-- Frames per label of one layer (every layer of a run has the same labels), for sizing a
-- balanced sample and for the report's label-frequency bars. Frames outside any interval are left out.
-- params: $run, $layer, $tier ('phone' or 'word')
with tiered as (
    select case $tier when 'word' then word else phone end as label
    from frames
    where run = $run and layer = $layer
),

final as (
    select label, count(*) as n_frames
    from tiered
    where label is not null
    group by label
    order by n_frames desc, label
)

select * from final
