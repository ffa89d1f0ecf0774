-- A deterministic sample of frames both runs hold: at most $n (utterance_id, frame) keys present
-- in $layer of $run and in $other_layer of $other (every layer of a run has the same frames),
-- picked by a seeded hash, so the same seed gives the same keys and a smaller $n a subset of a
-- larger one. Keys only: `pipeline.compare` registers them as `compare_keys` and fetches vectors
-- for them layer by layer (sql/compare_vectors.sql), so memory follows the sample.
-- params: $run, $layer, $other, $other_layer, $n, $seed
with a as (
    select utterance_id, frame from frames where run = $run and layer = $layer
),

b as (
    select utterance_id, frame from frames where run = $other and layer = $other_layer
),

shared as (
    select utterance_id, frame from a semi join b using (utterance_id, frame)
),

picked as (
    select utterance_id, frame
    from shared
    order by hash(utterance_id, frame, $seed), utterance_id, frame
    limit $n
),

final as (
    select * from picked order by utterance_id, frame
)

select * from final
