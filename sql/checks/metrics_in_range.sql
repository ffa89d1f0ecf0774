-- Every score of `metrics` and `group_metrics` is a known metric within its range (AMI and the
-- silhouette in [-1, 1]; NMI, homogeneity, completeness, V-measure, purities and probe accuracies
-- in [0, 1]; MI, inertia and counts >= 0; at most k clusters used). NaN only where the metric is
-- undefined: the silhouette of a sample with fewer than two clusters, any score of zero frames.
-- A null value only with its `null_reason` (metrics); an interval (ci_low, ci_high) whole or absent,
-- low <= high. CCA measures (k = 0) in [-1, 1]: PWCCA on held-out speakers is signed.
-- A new metric is declared here with its range. Metrics files written before intervals lack
-- null_reason, ci_low, ci_high: they read as null.
with ranges(metric, lo, hi) as (
    values
        ('ami', -1, 1), ('ami_shuffled_sample', -1, 1), ('ami_within', -1, 1), ('ami_transfer', -1, 1),
        ('silhouette', -1, 1),
        ('nmi', 0, 1), ('homogeneity', 0, 1), ('completeness', 0, 1), ('v_measure', 0, 1), ('pnmi', 0, 1),
        ('cluster_purity', 0, 1), ('label_purity', 0, 1),
        ('probe_accuracy', 0, 1), ('probe_balanced_accuracy', 0, 1), ('probe_chance', 0, 1),
        ('probe_balanced_accuracy_transfer', 0, 1), ('probe_balanced_accuracy_within', 0, 1),
        ('mi', 0, 'infinity'::double), ('kmeans_inertia', 0, 'infinity'::double),
        ('kmeans_train_points', 0, 'infinity'::double), ('probe_train_frames', 0, 'infinity'::double),
        ('n_labels', 0, 'infinity'::double), ('n_clusters', 0, 'infinity'::double),
        ('cca_phone', -1, 1), ('cca_word', -1, 1), ('cca_mel', -1, 1)
),

metrics_read as (
    from metrics
    union all by name
    select null::varchar as null_reason, null::double as ci_low, null::double as ci_high
    where false
),

scores as (
    select 'metrics' as source, run, layer, k, tier, subset as part, metric, value, n, null_reason, ci_low, ci_high
    from metrics_read
    union all
    select 'group_metrics', run, layer, k, tier, attribute || '=' || group_value, metric, value, n, null, null, null
    from group_metrics
),

final as (
    select s.*, r.lo, r.hi,
           case when r.metric is null then 'unknown metric'
                when s.n is null or s.n < 0 then 'negative n'
                when s.value is null and s.null_reason is null then 'null value without a reason'
                when (s.ci_low is null) <> (s.ci_high is null) then 'half an interval'
                when s.ci_low > s.ci_high then 'interval reversed'
                when isnan(s.value) then 'NaN'
                when s.metric = 'n_clusters' and s.value > s.k then 'more clusters than k'
                else 'out of range' end as problem
    from scores s
    left join ranges r using (metric)
    where r.metric is null
       or s.n is null or s.n < 0
       or (s.value is null and s.null_reason is null)
       or (s.ci_low is null) <> (s.ci_high is null)
       or s.ci_low > s.ci_high
       or (isnan(s.value) and not (s.metric = 'silhouette' or s.n = 0))
       or (not isnan(s.value) and (s.value < r.lo::double - 1e-9 or s.value > r.hi::double + 1e-9))
       or (s.metric = 'n_clusters' and s.value > s.k)
)

select * from final
