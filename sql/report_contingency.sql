-- Phone × cluster contingency of chosen layers of one run (k-means with $k clusters): frames per
-- (layer, phone, cluster), the share of the phone's frames in that cluster (rows sum to 1), the
-- cluster's majority phone, and sort keys: phones by class then frequency, clusters by their
-- majority phone's position (so a good clustering shows a diagonal).
-- `phone_classes` (label, class, class_order) is registered by the caller.
-- params: $run, $k, $layers (comma-separated)
with wanted as (
    select cast(unnest(string_split($layers, ',')) as bigint) as layer
),

joined as (
    select c.layer, f.phone, c.cluster
    from clusters c
    join frames f on f.run = c.run and f.layer = c.layer and f.utterance_id = c.utterance_id and f.frame = c.frame
    where c.run = $run and c.k = $k and c.layer in (select layer from wanted) and f.phone is not null
),

cells as (
    select layer, phone, cluster, count(*) as n_frames
    from joined
    group by all
),

phone_order as (
    select
        c.layer, c.phone, coalesce(pc.class, 'other') as phone_class, sum(c.n_frames)::bigint as phone_frames,
        row_number() over (
            partition by c.layer
            order by coalesce(any_value(pc.class_order), 99), sum(c.n_frames) desc, c.phone
        ) as phone_rank
    from cells c
    left join phone_classes pc on pc.label = c.phone
    group by c.layer, c.phone, pc.class
),

majority as (
    select layer, cluster, arg_max(phone, n_frames) as majority_phone, sum(n_frames)::bigint as cluster_frames
    from cells
    group by layer, cluster
),

cluster_order as (
    select
        m.layer, m.cluster, m.majority_phone, m.cluster_frames,
        row_number() over (partition by m.layer order by po.phone_rank, m.cluster_frames desc, m.cluster) as cluster_rank
    from majority m
    join phone_order po on po.layer = m.layer and po.phone = m.majority_phone
),

final as (
    select
        c.layer, c.phone, po.phone_class, c.cluster, c.n_frames,
        c.n_frames / po.phone_frames as share_of_phone,
        c.n_frames / co.cluster_frames as share_of_cluster,
        po.phone_frames, co.cluster_frames, co.majority_phone, po.phone_rank, co.cluster_rank
    from cells c
    join phone_order po on po.layer = c.layer and po.phone = c.phone
    join cluster_order co on co.layer = c.layer and co.cluster = c.cluster
    order by c.layer, po.phone_rank, co.cluster_rank
)

select * from final
