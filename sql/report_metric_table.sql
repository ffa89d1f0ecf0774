-- The report's metric table: one row per run, k and layer, one column per headline metric, and
-- the layer's speaker-disjoint linear phone probe (balanced accuracy, and its chance level). CCA
-- measures (k = 0, not a clustering) have their own query, report_cca.
-- params: $runs (comma-separated run names), $tier, $subset
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

picked as (
    select m.*, w.run_order
    from metrics m
    join wanted_runs w using (run)
    where m.tier = $tier and m.subset = $subset and m.k <> 0
),

pivoted as (
    select
        run,
        any_value(run_order) as run_order,
        k,
        layer,
        max(value) filter (where metric = 'ami') as ami,
        max(value) filter (where metric = 'nmi') as nmi,
        max(value) filter (where metric = 'homogeneity') as homogeneity,
        max(value) filter (where metric = 'completeness') as completeness,
        max(value) filter (where metric = 'cluster_purity') as cluster_purity,
        max(value) filter (where metric = 'label_purity') as label_purity,
        max(value) filter (where metric = 'pnmi') as pnmi,
        max(value) filter (where metric = 'silhouette') as silhouette,
        max(value) filter (where metric = 'probe_balanced_accuracy') as probe_balanced_accuracy,
        max(value) filter (where metric = 'probe_chance') as probe_chance,
        max(n) filter (where metric = 'ami') as n_frames
    from picked
    group by run, k, layer
),

final as (
    select * exclude (run_order) from pivoted order by run_order, k, layer
)

select * from final
