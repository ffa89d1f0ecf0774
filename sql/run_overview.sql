-- Every run in the warehouse: utterances kept and quarantined, audio hours, model and layers.
with kept as (
    select run, count(*) as utterances, sum(duration_s) / 3600 as hours, count(distinct speaker) as speakers
    from utterances group by run
),

dropped as (
    select run, count(*) as quarantined from quarantine group by run
),

final as (
    select
        r.run,
        coalesce(k.utterances, 0) as utterances,
        coalesce(d.quarantined, 0) as quarantined,
        round(coalesce(k.hours, 0), 4) as hours,
        k.speakers,
        r.facts ->> '$.model.model_id' as model,
        r.facts ->> '$.layers' as layers
    from runs r
    left join kept k using (run)
    left join dropped d using (run)
    order by r.run
)

select * from final
