-- Every phone label of the warehouse's frames: the report maps them to classes
-- (pipeline/phone_classes.py) and registers the result as `phone_classes` for the other queries.
with labels as (
    select distinct phone from frames where phone is not null
),

final as (
    select phone from labels order by phone
)

select * from final
