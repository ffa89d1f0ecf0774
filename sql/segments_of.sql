-- The intervals of one tier for a list of utterances of a run, in time order: what a streaming
-- pass needs to label one file's frames with a segment tier (e.g. ctc_greedy).
-- params: $run, $tier, $utterances (a list of utterance ids)
with final as (
    select utterance_id, start_s, end_s, label
    from segments
    where run = $run and tier = $tier and list_contains($utterances, utterance_id)
    order by utterance_id, start_s
)

select * from final
