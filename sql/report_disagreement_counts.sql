-- Frames per number of disagreeing reference transcripts (`python -m pipeline transcripts`, table
-- `frame_disagreement`): per run and rule, how many frames 0, 1, 2, … references disagree with
-- the model at, and their share of the run's scored frames. Runs keep the order given.
-- params: $runs (comma-separated run names)
with wanted_runs as (
    select unnest(string_split($runs, ',')) as run, generate_subscripts(string_split($runs, ','), 1) as run_order
),

picked as (
    select d.run, w.run_order, d.rule, d.n_disagree, d.n_references
    from frame_disagreement d
    join wanted_runs w using (run)
),

counted as (
    select
        run, any_value(run_order) as run_order, rule, n_disagree::integer as n_disagree,
        max(n_references)::integer as n_references, count(*) as n_frames
    from picked
    group by run, rule, n_disagree
),

final as (
    select
        run, rule, n_disagree, n_references, n_frames,
        n_frames / sum(n_frames) over (partition by run, rule) as share
    from counted
    order by run_order, rule, n_disagree
)

select * from final
