-- One layer's vectors of the sampled frames, in key order. `compare_keys` (utterance_id, frame)
-- is registered by the caller from sql/compare_shared_keys.sql.
-- params: $run, $layer
with layer_frames as (
    select utterance_id, frame, vector from frames where run = $run and layer = $layer
),

final as (
    select f.utterance_id, f.frame, f.vector
    from layer_frames f
    semi join compare_keys k using (utterance_id, frame)
    order by f.utterance_id, f.frame
)

select * from final
