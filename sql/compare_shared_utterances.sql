-- Do two runs hold the same recordings? One row: utterances of each run, those in both, and the
-- shared ids whose sample counts differ (the same id, other audio: not comparable), at most 5 named.
-- params: $run, $other
with a as (
    select utterance_id, n_samples from utterances where run = $run
),

b as (
    select utterance_id, n_samples from utterances where run = $other
),

shared as (
    select a.utterance_id, a.n_samples, b.n_samples as other_n_samples
    from a join b using (utterance_id)
),

final as (
    select
        (select count(*) from a) as n_run,
        (select count(*) from b) as n_other,
        count(*) as n_shared,
        count(*) filter (where n_samples != other_n_samples) as n_mismatched,
        (list(utterance_id || ' (' || n_samples || ' vs ' || other_n_samples || ' samples)' order by utterance_id)
            filter (where n_samples != other_n_samples))[1:5] as mismatched_examples
    from shared
)

select * from final
