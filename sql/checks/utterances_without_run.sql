-- Every run in a table has recorded facts.
select distinct run from utterances where run not in (select run from runs)
