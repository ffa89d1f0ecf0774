-- Frames per label of one layer (every layer of a run has the same labels), for sizing a
-- balanced sample and for the report's label-frequency bars. Frames outside any interval are left out.
-- $tier: 'phone' or 'word' (the frames' own columns), or any tier of `segments` (e.g. ctc_greedy):
-- the label of the interval holding the frame's centre, start inclusive, end exclusive (the
-- `frame_labels` macro that every query shares).
-- params: $run, $layer, $tier
with tiered as (  -- the label on $tier of every frame of the layer (macro frame_labels, pipeline/warehouse.py)
    select label
    from frame_labels($run, $tier)
    where layer = $layer
),

final as (
    select label, count(*) as n_frames
    from tiered
    where label is not null
    group by label
    order by n_frames desc, label
)

select * from final
