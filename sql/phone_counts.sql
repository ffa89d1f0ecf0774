-- Phone inventory of a run: frames per phone label (one layer's frames; every layer has the same
-- labels), with the share of all labelled frames and the number of utterances it occurs in.
-- params: $run
with one_layer as (
    select phone, utterance_id
    from frames
    where run = $run
      and layer = (select min(layer) from frames where run = $run)
),

counted as (
    select
        coalesce(phone, '<none>') as phone,
        count(*) as n_frames,
        count(distinct utterance_id) as n_utterances
    from one_layer
    group by all
),

final as (
    select *, round(n_frames / sum(n_frames) over (), 6) as share
    from counted
    order by n_frames desc, phone
)

select * from final
