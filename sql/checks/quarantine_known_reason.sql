-- Every quarantine reason is one of pipeline.warehouse.schemas.REASONS (the view quarantine_reasons).
select *
from quarantine
where reason not in (select reason from quarantine_reasons)
