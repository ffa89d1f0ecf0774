-- One decoded transcript per utterance per clustering: every column but the texts and scores is
-- the key (run, layer, k[, tier], utterance); the utterance is kept in its run; n_edits and
-- n_reference_chars are >= 0 and cer = n_edits / n_reference_chars (0 for two empty texts, NaN for
-- an empty reference alone).
with duplicated as (
    select * exclude (hypothesis, reference, n_edits, n_reference_chars, cer), count(*) as n_rows,
           'duplicate key' as problem
    from decoded
    group by all
    having count(*) > 1
),

orphans as (
    select d.*, 'no such utterance in the run' as problem
    from decoded d
    anti join utterances u using (run, utterance_id)
),

invalid as (
    select *, 'counts negative or cer not n_edits / n_reference_chars' as problem
    from decoded
    where n_edits is null or n_edits < 0 or n_reference_chars is null or n_reference_chars < 0 or cer is null
       or case when n_reference_chars > 0 then isnan(cer) or abs(cer - n_edits / n_reference_chars) > 1e-9
               when n_edits = 0 then cer != 0
               else not isnan(cer) end
),

final as (
    select * from duplicated
    union all by name
    select * from orphans
    union all by name
    select * from invalid
)

select * from final
