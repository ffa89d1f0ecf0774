-- Every utterance of a run with its value of one attribute: speaker, split, corpus, or a key of
-- the utterance metadata (gender, dialect, age, …). Null where the utterance lacks it.
-- params: $run, $by
with final as (
    select
        utterance_id,
        case $by
            when 'speaker' then speaker
            when 'split' then split
            when 'corpus' then corpus
            else metadata[$by]
        end as grp
    from utterances
    where run = $run
    order by utterance_id
)

select * from final
