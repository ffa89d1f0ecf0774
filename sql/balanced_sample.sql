-- A balanced sample of one layer's frames: at most $per_label frames of every label of $tier,
-- chosen by a seeded hash, so the same seed gives the same rows (and a smaller $per_label gives a
-- subset of a larger one). Frames outside any interval are left out.
-- $tier: 'phone' or 'word' (the frames' own columns), or any tier of `segments` (e.g. ctc_greedy,
-- ctc_char): the label of the interval holding the frame's centre, start inclusive, end exclusive.
-- Each row also carries the utterance's speaker and its value of $by (speaker, split, corpus, an
-- attached attribute, or a metadata key such as gender or dialect; '' for none), for probes and
-- per-group scores (as sql/utterance_groups.sql resolves it).
-- Frames are chosen on their keys alone, by a bounded top-N per label; vectors are fetched for the
-- chosen ones only, so memory follows the sample, not the layer.
-- params: $run, $layer, $per_label, $seed, $tier, $by
with tiered as (  -- the label on $tier of every frame of the layer (macro frame_labels, pipeline/warehouse.py)
    select utterance_id, frame, label
    from frame_labels($run, $tier)
    where layer = $layer
),

picked as (
    -- the $per_label frames of each label with the smallest (hash, utterance_id, frame): a bounded
    -- top-N heap per label (min_by with n), so memory follows labels × $per_label, never the layer
    select
        label,
        unnest(min_by({'utterance_id': utterance_id, 'frame': frame},
                      {'h': hash(utterance_id, frame, $seed), 'u': utterance_id, 'f': frame}, $per_label)) as pick
    from tiered
    where label is not null
    group by label
),

chosen as (
    select pick.utterance_id as utterance_id, pick.frame as frame, label from picked
),

final as (
    select
        c.utterance_id,
        c.frame,
        c.label,
        u.speaker,
        case $by
            when '' then null
            when 'speaker' then u.speaker
            when 'split' then u.split
            when 'corpus' then u.corpus
            else coalesce(a.value, u.metadata[$by])
        end as grp,
        f.vector
    from chosen c
    join frames f on f.run = $run and f.layer = $layer and f.utterance_id = c.utterance_id and f.frame = c.frame
    left join utterances u on u.run = $run and u.utterance_id = c.utterance_id
    left join utterance_attributes a on a.run = $run and a.key = $by and a.utterance_id = c.utterance_id
    order by c.utterance_id, c.frame
)

select * from final
