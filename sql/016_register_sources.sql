-- The keys of a run's files for the lineage of its lines (staging.fact_sources): the files its
-- silver step cleaned (audit.run_log, as notebook 02 recorded them) are registered first, once
-- (a retried load finds them). Notebook 04 calls it before it copies the run's lines.
create or replace function staging.register_sources(p_run_id text)
returns table (source_object text, source_key int)
language sql
as $$
    insert into staging.fact_sources (run_id, source_object)
    select run_id, source from audit.run_log
    where run_id = p_run_id and step = 'silver' and status = 'success'
    on conflict do nothing;
    select s.source_object, s.source_key from staging.fact_sources as s where s.run_id = p_run_id;
$$;
