-- The maps hold a sample of frames: (run, layer, method, utterance, frame) is the key of
-- reductions (every column but label, x and y), every row is a frame of its run and layer, its
-- method is known and its coordinates are finite.
with duplicated as (
    select * exclude (label, x, y), count(*) as n_rows, 'duplicate key' as problem
    from reductions
    group by all
    having count(*) > 1
),

orphans as (
    select r.*, 'not a frame of its run and layer' as problem
    from reductions r
    anti join frames f using (run, layer, utterance_id, frame)
),

invalid as (
    select *, case when method not in ('pca', 'tsne', 'umap') then 'unknown method'
                   else 'coordinates not finite' end as problem
    from reductions
    where method is null or method not in ('pca', 'tsne', 'umap')
       or x is null or y is null or not isfinite(x) or not isfinite(y)
),

final as (
    select * from duplicated
    union all by name
    select * from orphans
    union all by name
    select * from invalid
)

select * from final
