-- Segments belong to a kept utterance of the same run.
select s.run, s.utterance_id, s.tier, s.idx
from segments s
anti join utterances u using (run, utterance_id)
