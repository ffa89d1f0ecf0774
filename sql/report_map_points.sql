-- Points of a multi-panel map: the frames that a reduction ($method) placed in EVERY panel
-- (a panel is one run and layer), at most $n_points of them picked by a seeded hash, with what
-- the charts colour and show: the frame's label on $tier, its name if among the layer's $top_n
-- most frequent labels (else 'other'; '(none)' outside any interval), its phone and the phone's
-- class (the `phone_classes` table, registered by the caller), speaker (the $top_n with most
-- audio, else 'other'), utterance metadata, time, how many reference transcripts disagree with
-- the model at the frame (`frame_disagreement` of the first panel's run under $rule; null without
-- one), and the frame's k-means cluster in that panel (k = $k, trained for $tier; null if none).
-- One row per panel and frame.
-- $tier: 'phone' or 'word' (columns of `frames`) or any `segments` tier (e.g. ctc_greedy): the
-- interval holding the frame's centre (run geometry; start inclusive, end exclusive).
-- params: $panels ('run:layer,run:layer,…'), $method, $k, $n_points, $top_n, $seed, $tier, $rule
with panel_list as (
    select unnest(string_split($panels, ',')) as item, generate_subscripts(string_split($panels, ','), 1) as panel
),

panels as (
    select panel, split_part(item, ':', 1) as run, cast(split_part(item, ':', 2) as bigint) as layer
    from panel_list
),

points as (
    select p.panel, p.run, p.layer, r.utterance_id, r.frame, r.x, r.y
    from reductions r
    join panels p on r.run = p.run and r.layer = p.layer
    where r.method = $method
),

shared as (
    select utterance_id, frame
    from points
    group by utterance_id, frame
    having count(distinct panel) = (select count(*) from panels)
),

picked as (
    select utterance_id, frame
    from shared
    order by hash(utterance_id, frame, $seed), utterance_id, frame
    limit $n_points
),

first_panel as (
    select run, layer from panels where panel = 1
),

layer_frames as (  -- every frame of the first panel's layer, labelled on $tier (macro frame_labels)
    select utterance_id, frame, time_s, phone, label
    from frame_labels((select run from first_panel), $tier)
    where layer = (select layer from first_panel)
),

attached as (  -- attributes attached from files (`python -m pipeline metadata`) override the corpus's own
    select utterance_id, map_from_entries(list({'key': key, 'value': value})) as attrs
    from utterance_attributes
    where run = (select run from first_panel)
    group by utterance_id
),

labelled as (
    select
        lf.utterance_id, lf.frame, lf.time_s, lf.phone, lf.label, u.speaker,
        case when a.attrs is null then u.metadata else map_concat(coalesce(u.metadata, map()), a.attrs) end as metadata
    from layer_frames lf
    semi join picked k on lf.utterance_id = k.utterance_id and lf.frame = k.frame
    left join utterances u on u.run = (select run from first_panel) and u.utterance_id = lf.utterance_id
    left join attached a on a.utterance_id = lf.utterance_id
),

label_rank as (  -- top labels by frames in the whole layer, not in the (balanced) sample
    select label, row_number() over (order by count(*) desc, label) as rank
    from layer_frames
    where label is not null
    group by label
),

speaker_rank as (  -- top speakers by audio duration in the run
    select u.speaker, row_number() over (order by sum(u.duration_s) desc, u.speaker) as rank
    from utterances u
    join first_panel fp on u.run = fp.run
    group by u.speaker
),

disagreement as (
    select d.utterance_id, d.frame, d.n_disagree, d.n_references
    from frame_disagreement d
    join first_panel fp on d.run = fp.run
    where d.rule = $rule
),

described as (
    select
        l.*,
        case when l.label is null then '(none)' when lr.rank <= $top_n then l.label else 'other' end as label_top,
        case when l.label is null then $top_n + 2 when lr.rank <= $top_n then lr.rank else $top_n + 1 end
            as label_top_rank,
        coalesce(pc.class, 'other') as phone_class,
        case when sr.rank <= $top_n then l.speaker else 'other' end as speaker_top,
        case when sr.rank <= $top_n then sr.rank else $top_n + 1 end as speaker_top_rank,
        d.n_disagree,
        d.n_references
    from labelled l
    left join label_rank lr on lr.label is not distinct from l.label
    left join speaker_rank sr on sr.speaker is not distinct from l.speaker
    left join phone_classes pc on pc.label = l.phone
    left join disagreement d on d.utterance_id = l.utterance_id and d.frame = l.frame
),

final as (
    select
        p.panel, p.run, p.layer, d.utterance_id, d.frame, d.time_s, d.phone, d.phone_class, d.label, d.label_top,
        d.label_top_rank, d.speaker, d.speaker_top, d.speaker_top_rank, d.metadata, d.n_disagree, d.n_references,
        p.x, p.y, c.cluster
    from points p
    join described d on d.utterance_id = p.utterance_id and d.frame = p.frame
    left join clusters c
        on c.run = p.run and c.layer = p.layer and c.k = $k and c.tier = $tier
        and c.utterance_id = p.utterance_id and c.frame = p.frame
    order by p.panel, d.utterance_id, d.frame
)

select * from final
