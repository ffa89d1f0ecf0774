-- An utterance appears once per run.
select run, utterance_id, count(*) as n
from utterances
group by all
having count(*) > 1
