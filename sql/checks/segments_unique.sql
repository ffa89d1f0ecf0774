-- (run, utterance, tier, idx) is the key of segments.
select run, utterance_id, tier, idx, count(*) as n
from segments
group by all
having count(*) > 1
