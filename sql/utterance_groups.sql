-- Every utterance of a run with its value of one attribute: speaker, split, corpus, an attribute
-- attached from a file (`python -m pipeline metadata`: table utterance_attributes), or a key of
-- the utterance metadata (gender, dialect, age, …), in that order. Null where the utterance lacks it.
-- params: $run, $by
with attached as (
    select utterance_id, value
    from utterance_attributes
    where run = $run and key = $by
),

final as (
    select
        u.utterance_id,
        case $by
            when 'speaker' then u.speaker
            when 'split' then u.split
            when 'corpus' then u.corpus
            else coalesce(a.value, u.metadata[$by])
        end as grp
    from utterances u
    left join attached a using (utterance_id)
    where u.run = $run
    order by u.utterance_id
)

select * from final
