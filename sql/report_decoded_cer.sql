-- Per run, layer and k (the k-means trained for $tier): the character error rate of decoding each
-- frame's k-means cluster as the cluster's majority greedy-CTC label (`python -m pipeline transcripts`, table `decoded`), scored
-- against the model's own greedy transcript. Corpus CER = sum of edits / sum of reference
-- characters (utterances weigh by length); the mean of per-utterance CERs beside it (utterances
-- with an empty reference left out of the mean). Runs keep the order given.
-- params: $runs (comma-separated run names), $tier
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

picked as (
    select d.run, w.run_order, d.layer, d.k, d.n_edits, d.n_reference_chars, d.cer
    from decoded d
    join wanted_runs w using (run)
    where d.tier = $tier
),

final as (
    select
        run,
        layer,
        k,
        count(*) as n_utterances,
        sum(n_edits)::bigint as n_edits,
        sum(n_reference_chars)::bigint as n_reference_chars,
        sum(n_edits) / nullif(sum(n_reference_chars), 0) as cer,
        avg(cer) filter (where n_reference_chars > 0) as mean_utterance_cer
    from picked
    group by run, layer, k
    order by any_value(run_order), k, layer
)

select * from final
