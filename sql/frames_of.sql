-- Frames of one layer restricted to chosen phones, speakers and/or utterances.
-- Each filter is a comma-separated list; an empty string means "all".
-- params: $run, $layer, $phones, $speakers, $utterances
with wanted as (
    select
        string_split(nullif($phones, ''), ',') as phones,
        string_split(nullif($speakers, ''), ',') as speakers,
        string_split(nullif($utterances, ''), ',') as utterances
),

final as (
    select f.utterance_id, u.speaker, f.frame, f.time_s, f.phone, f.word, f.vector
    from frames f
    join utterances u using (run, utterance_id)
    cross join wanted w
    where f.run = $run and f.layer = $layer
      and (w.phones is null or list_contains(w.phones, f.phone))
      and (w.speakers is null or list_contains(w.speakers, u.speaker))
      and (w.utterances is null or list_contains(w.utterances, f.utterance_id))
    order by f.utterance_id, f.frame
)

select * from final
