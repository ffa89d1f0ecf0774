-- The columns of one view of the warehouse, in order (none: the view does not exist). The report asks
-- before it reads a table that older warehouses lack (metric_differences) or columns they lack.
-- params: $view
with columns as (
    select column_name, data_type, ordinal_position
    from information_schema.columns
    where table_name = $view
),

final as (
    select column_name, data_type from columns order by ordinal_position
)

select * from final
