-- One value per (run, utterance, key): two metadata files giving the same attribute of one utterance
-- are refused by `metadata`, so a repeat here would double rows in every --by grouping.
select run, utterance_id, key, count(*) as n, list(value) as values
from utterance_attributes
group by run, utterance_id, key
having count(*) > 1
