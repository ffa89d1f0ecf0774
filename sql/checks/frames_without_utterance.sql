-- Frames belong to a kept utterance of a run with recorded facts.
select distinct f.run, f.utterance_id
from frames f
anti join utterances u using (run, utterance_id)
