-- Every utterance of a run with its text and metadata (where extra reference transcripts live).
-- params: $run
with final as (
    select utterance_id, text, metadata
    from utterances
    where run = $run
    order by utterance_id
)

select * from final
