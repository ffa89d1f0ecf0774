-- Label × cluster contingency of chosen layers of one run (k-means with $k clusters, trained for $tier): frames per
-- (layer, label, cluster), the share of the label's frames in that cluster (rows sum to 1), the
-- cluster's majority label, and sort keys: labels by phone class then frequency, clusters by their
-- majority label's position (so a good clustering shows a diagonal).
-- $tier: 'phone' or 'word' (columns of `frames`) or any `segments` tier (e.g. ctc_greedy): the
-- interval holding the frame's centre (run geometry; start inclusive, end exclusive).
-- `phone_classes` (label, class, class_order) is registered by the caller; labels it does not
-- know (words, characters) have class 'other'.
-- params: $run, $k, $layers (comma-separated), $tier
with wanted as (
    select cast(unnest(string_split($layers, ',')) as bigint) as layer
),

joined as (  -- every clustered frame with its label on $tier (macro frame_labels, pipeline/warehouse.py)
    select c.layer, c.cluster, fl.label
    from clusters c
    join frame_labels($run, $tier) fl on fl.layer = c.layer and fl.utterance_id = c.utterance_id and fl.frame = c.frame
    where c.run = $run and c.k = $k and c.tier = $tier and c.layer in (select layer from wanted)
),

cells as (
    select layer, label, cluster, count(*) as n_frames
    from joined
    where label is not null
    group by all
),

label_order as (
    select
        c.layer, c.label, coalesce(pc.class, 'other') as label_class, sum(c.n_frames)::bigint as label_frames,
        row_number() over (
            partition by c.layer
            order by coalesce(any_value(pc.class_order), 99), sum(c.n_frames) desc, c.label
        ) as label_rank
    from cells c
    left join phone_classes pc on pc.label = c.label
    group by c.layer, c.label, pc.class
),

majority as (
    select layer, cluster, arg_max(label, n_frames) as majority_label, sum(n_frames)::bigint as cluster_frames
    from cells
    group by layer, cluster
),

cluster_order as (
    select
        m.layer, m.cluster, m.majority_label, m.cluster_frames,
        row_number() over (
            partition by m.layer order by lo.label_rank, m.cluster_frames desc, m.cluster
        ) as cluster_rank
    from majority m
    join label_order lo on lo.layer = m.layer and lo.label = m.majority_label
),

final as (
    select
        c.layer, c.label, lo.label_class, c.cluster, c.n_frames,
        c.n_frames / lo.label_frames as share_of_label,
        c.n_frames / co.cluster_frames as share_of_cluster,
        lo.label_frames, co.cluster_frames, co.majority_label, lo.label_rank, co.cluster_rank
    from cells c
    join label_order lo on lo.layer = c.layer and lo.label = c.label
    join cluster_order co on co.layer = c.layer and co.cluster = c.cluster
    order by c.layer, lo.label_rank, co.cluster_rank
)

select * from final
