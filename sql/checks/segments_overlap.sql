-- Intervals of one tier do not overlap (ordered by idx).
with ordered as (
    select run, utterance_id, tier, idx, start_s,
           lag(end_s) over (partition by run, utterance_id, tier order by idx) as previous_end_s
    from segments
)
select * from ordered where start_s < previous_end_s - 1e-6
