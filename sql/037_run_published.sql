-- Has the publish gate passed for this run (its merge committed)? A retry after the commit then
-- merges nothing again and the run's transit rows may be removed.
create or replace function staging.run_published(p_run_id text)
returns boolean
language sql
stable
as $$
    select exists (select 1 from audit.run_log
                   where run_id = p_run_id and step = 'publish' and status = 'success');
$$;
