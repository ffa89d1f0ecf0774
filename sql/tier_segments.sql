-- Every interval of one tier of a run, in order: e.g. the greedy CTC labels (tier ctc_greedy)
-- that `transcripts` turns back into per-frame labels.
-- params: $run, $tier
with final as (
    select utterance_id, label, start_s, end_s
    from segments
    where run = $run and tier = $tier
    order by utterance_id, idx
)

select * from final
