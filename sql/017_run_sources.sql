-- The keys of a run's files (staging.fact_sources), by which its fact lines name it. What reads
-- a run's lines takes them first and passes them as constants: the planner then sees them, and
-- finds a small run's lines by the fact's index on source_key (a subquery in their place hides
-- them: a run of 100 lines read the whole 10M-line fact, measured).
create or replace function staging.run_sources(p_run_id text)
returns int[]
language sql
stable
as $$
    select coalesce(array_agg(source_key order by source_key), '{}')
    from staging.fact_sources where run_id = p_run_id;
$$;
