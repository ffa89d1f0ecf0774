-- Points of a multi-panel map: the frames that a reduction ($method) placed in EVERY panel
-- (a panel is one run and layer), at most $n_points of them picked by a seeded hash, with what
-- the charts colour and show: phone, its name if among the layer's $top_n most frequent (else
-- 'other'), its class (the `phone_classes` table, registered by the caller), speaker (the $top_n
-- with most audio, else 'other'),
-- utterance metadata, time, and the frame's k-means cluster in that panel (k = $k; null if none).
-- One row per panel and frame.
-- params: $panels ('run:layer,run:layer,…'), $method, $k, $n_points, $top_n, $seed
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

labelled as (
    select f.utterance_id, f.frame, f.time_s, f.phone, u.speaker, u.metadata
    from frames f
    join first_panel fp on f.run = fp.run and f.layer = fp.layer
    semi join picked k on f.utterance_id = k.utterance_id and f.frame = k.frame
    left join utterances u on u.run = f.run and u.utterance_id = f.utterance_id
),

phone_rank as (  -- top phones by frames in the whole layer, not in the (balanced) sample
    select f.phone, row_number() over (order by count(*) desc, f.phone) as rank
    from frames f
    join first_panel fp on f.run = fp.run and f.layer = fp.layer
    group by f.phone
),

speaker_rank as (  -- top speakers by audio duration in the run
    select u.speaker, row_number() over (order by sum(u.duration_s) desc, u.speaker) as rank
    from utterances u
    join first_panel fp on u.run = fp.run
    group by u.speaker
),

described as (
    select
        l.*,
        case when pr.rank <= $top_n then l.phone else 'other' end as phone_top,
        case when pr.rank <= $top_n then pr.rank else $top_n + 1 end as phone_top_rank,
        coalesce(pc.class, 'other') as phone_class,
        case when sr.rank <= $top_n then l.speaker else 'other' end as speaker_top,
        case when sr.rank <= $top_n then sr.rank else $top_n + 1 end as speaker_top_rank
    from labelled l
    left join phone_rank pr on pr.phone is not distinct from l.phone
    left join speaker_rank sr on sr.speaker is not distinct from l.speaker
    left join phone_classes pc on pc.label = l.phone
),

final as (
    select
        p.panel, p.run, p.layer, d.utterance_id, d.frame, d.time_s, d.phone, d.phone_top, d.phone_top_rank,
        d.phone_class, d.speaker, d.speaker_top, d.speaker_top_rank, d.metadata, p.x, p.y, c.cluster
    from points p
    join described d on d.utterance_id = p.utterance_id and d.frame = p.frame
    left join clusters c
        on c.run = p.run and c.layer = p.layer and c.k = $k and c.utterance_id = p.utterance_id and c.frame = p.frame
    order by p.panel, d.utterance_id, d.frame
)

select * from final
