-- The `segments` tiers of each chosen run (phone, word, ctc_greedy, …): the report checks a --tier
-- other than the frames' own columns (phone, word) against these before drawing anything.
-- params: $runs (comma-separated run names)
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run
),

final as (
    select distinct s.run, s.tier
    from segments s
    semi join wanted_runs w on w.run = s.run
    order by s.run, s.tier
)

select * from final
