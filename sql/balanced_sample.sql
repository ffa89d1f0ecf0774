-- A balanced sample of one layer's frames: at most $per_label frames of every label of $tier
-- ('phone' or 'word'), chosen by a seeded hash, so the same seed gives the same rows (and a
-- smaller $per_label gives a subset of a larger one). Frames outside any interval are left out.
-- Frames are chosen on their keys alone; vectors are fetched for the chosen ones only, so memory
-- follows the sample, not the layer.
-- params: $run, $layer, $per_label, $seed, $tier
with tiered as (
    select utterance_id, frame, case $tier when 'word' then word else phone end as label
    from frames
    where run = $run and layer = $layer
),

ranked as (
    select
        *,
        row_number() over (partition by label order by hash(utterance_id, frame, $seed), utterance_id, frame) as pick
    from tiered
    where label is not null
),

chosen as (
    select utterance_id, frame, label from ranked where pick <= $per_label
),

final as (
    select c.utterance_id, c.frame, c.label, f.vector
    from chosen c
    join frames f on f.run = $run and f.layer = $layer and f.utterance_id = c.utterance_id and f.frame = c.frame
    order by c.utterance_id, c.frame
)

select * from final
