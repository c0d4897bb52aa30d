-- Remove a published run's transit rows (after the merge's transaction has committed), and the
-- rows other runs left behind. A run that is not published keeps them: the merge's retry needs
-- them, and a person inspecting a failed gate too. They are left behind, and go with the next
-- run's, once the run is published (its own clear failed after the commit) or nothing was
-- logged for it for p_left_after (a failed or killed run: if it is ever retried, its merge
-- reloads them from gold, staging.transit_shortfall). Without this, one failed run made every
-- later clear delete its run's rows one by one instead of truncating (millions after a large
-- run, then vacuumed). A table that holds no rows of another run under way is emptied at once
-- (TRUNCATE), else the run's rows and those left behind are deleted; it is taken only if no
-- other session is using it (NOWAIT), else only the run's rows are deleted (another run's load
-- goes on, and its rows are never touched).
drop procedure if exists staging.sp_clear_transit(text);

create or replace procedure staging.sp_clear_transit(
    p_run_id text, p_left_after interval default '1 day'
)
language plpgsql
as $$
declare
    v_table text;
    v_kept  text[];  -- other runs whose rows stay; null: the table could not be taken
begin
    if not staging.run_published(p_run_id) then
        raise exception 'sp_clear_transit(%): the run is not published; its transit rows are kept',
            p_run_id;
    end if;
    foreach v_table in array staging.transit_tables() loop
        begin
            execute format('lock table public.%I in access exclusive mode nowait', v_table);
            -- Rows of another run are kept only if it is under way (not published, logged
            -- within p_left_after); while no run is, the table is not read (10M rows: 1.1-1.3 s;
            -- issue 12), and the lock keeps any other from loading now.
            v_kept := '{}';
            if exists (select 1
                       from (select distinct run_id from audit.run_log
                             where run_id <> p_run_id
                               and coalesce(finished_at, started_at) > now() - p_left_after) as o
                       where not staging.run_published(o.run_id)) then
                -- each run once: the conditions on a run, pushed down into the distinct,
                -- would be asked of each of its rows (10M rows kept: 33 s instead of 2.6 s)
                execute format(
                    $kept$
                    with o as materialized (select distinct run_id from public.%I
                                            where run_id <> $1)
                    select coalesce(array_agg(o.run_id), '{}')
                    from o
                    where not staging.run_published(o.run_id)
                      and exists (select 1 from audit.run_log as l
                                  where l.run_id = o.run_id
                                    and coalesce(l.finished_at, l.started_at) > now() - $2)
                    $kept$, v_table)
                    into v_kept using p_run_id, p_left_after;
            end if;
        exception when lock_not_available then
            v_kept := null;
        end;
        if v_kept = '{}' then
            execute format('truncate public.%I', v_table);
        elsif v_kept is null then
            execute format('delete from public.%I where run_id = $1', v_table) using p_run_id;
        else
            execute format('delete from public.%I where run_id <> all($1)', v_table) using v_kept;
        end if;
    end loop;
end;
$$;
