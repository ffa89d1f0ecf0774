-- Every interval has positive length and lies inside its utterance's audio.
select s.*
from segments s
join utterances u using (run, utterance_id)
where s.end_s <= s.start_s or s.start_s < 0 or s.end_s > u.duration_s + 1e-9
