-- Reason codes come from pipeline.schemas.REASONS.
select *
from quarantine
where reason not in ('decode_error', 'empty_audio', 'too_short', 'non_finite', 'alignment_out_of_range',
                     'alignment_overlap', 'alignment_empty_label', 'alignment_bad_interval',
                     'missing_alignment', 'missing_audio', 'missing_id', 'duplicate_id', 'model_error',
                     'prepare_error', 'not_a_regular_file', 'audio_too_large', 'duplicate_file')
