-- A balanced sample of one layer's frames: at most $per_label frames of every label of $tier
-- ('phone' or 'word'), chosen by a seeded hash, so the same seed gives the same rows.
-- Frames outside any interval (label null) are left out.
-- params: $run, $layer, $per_label, $seed
with labelled as (
    select utterance_id, frame, phone as label, vector
    from frames
    where run = $run and layer = $layer and phone is not null
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
