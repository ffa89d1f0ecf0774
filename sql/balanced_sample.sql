-- A balanced sample of one layer's frames: at most $per_label frames of every label of $tier
-- ('phone' or 'word'), chosen by a seeded hash, so the same seed gives the same rows.
-- Frames outside any interval (label null) are left out.
-- params: $run, $layer, $per_label, $seed, $tier
with tiered as (
    select utterance_id, frame, case $tier when 'word' then word else phone end as label, vector
    from frames
    where run = $run and layer = $layer
),

labelled as (
    select * from tiered where label is not null
),

ranked as (
    select
        *,
        row_number() over (partition by label order by hash(utterance_id, frame, $seed), utterance_id, frame) as pick
    from labelled
),

final as (
    select utterance_id, frame, label, vector
    from ranked
    where pick <= $per_label
    order by utterance_id, frame
)

select * from final
