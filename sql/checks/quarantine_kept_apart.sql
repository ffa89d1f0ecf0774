-- A quarantined utterance has no rows anywhere else, and one quarantine row per run.
with q as (select run, utterance_id, count(*) as n from quarantine group by all)
select q.run, q.utterance_id, q.n, 'kept and quarantined' as problem
from q join utterances u using (run, utterance_id)
union all
select run, utterance_id, n, 'quarantined twice' from q where n > 1
