-- Per-layer summary of a run: frames, utterances, labelled share, distinct phones, vector size
-- and mean L2 norm (a quick look at how each layer's scale changes with depth).
-- params: $run
with per_layer as (
    select
        layer,
        count(*) as n_frames,
        count(distinct utterance_id) as n_utterances,
        avg((phone is not null)::int) as labelled_share,
        count(distinct phone) as n_phones,
        max(len(vector)) as dim,
        avg(sqrt(list_dot_product(vector, vector))) as mean_norm
    from frames
    where run = $run
    group by layer
),

final as (
    select * from per_layer order by layer
)

select * from final
