-- (run, rule, utterance, frame) is the key of frame_disagreement (every column but the counts); the
-- utterance is kept in its run; 0 <= frame and 0 <= n_disagree <= n_references, at least one reference.
with duplicated as (
    select * exclude (n_disagree, n_references), count(*) as n_rows, 'duplicate key' as problem
    from frame_disagreement
    group by all
    having count(*) > 1
),

orphans as (
    select d.*, 'no such utterance in the run' as problem
    from frame_disagreement d
    anti join utterances u using (run, utterance_id)
),

invalid as (
    select *, 'frame < 0, or n_disagree outside [0, n_references], or no reference' as problem
    from frame_disagreement
    where frame is null or frame < 0 or n_references is null or n_references < 1
       or n_disagree is null or n_disagree < 0 or n_disagree > n_references
),

final as (
    select * from duplicated
    union all by name
    select * from orphans
    union all by name
    select * from invalid
)

select * from final
