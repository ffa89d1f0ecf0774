-- (run, layer, utterance, frame) is the key of frames.
select run, layer, utterance_id, frame, count(*) as n
from frames
group by all
having count(*) > 1
