-- Remove a published run's transit rows (after the merge's transaction has committed). A run
-- that is not published keeps them: the merge's retry needs them, and a person inspecting a
-- failed gate too. A table that holds this run's rows only is emptied at once (TRUNCATE: no
-- dead rows to delete and vacuum, millions after a large run); it is taken only if no other
-- session is using it (NOWAIT: another run's load goes on, and its rows are never touched),
-- else the run's rows are deleted.
create or replace procedure staging.sp_clear_transit(p_run_id text)
language plpgsql
as $$
declare
    v_table text;
    v_alone boolean;
begin
    if not staging.run_published(p_run_id) then
        raise exception 'sp_clear_transit(%): the run is not published; its transit rows are kept',
            p_run_id;
    end if;
    foreach v_table in array staging.transit_tables() loop
        begin
            execute format('lock table public.%I in access exclusive mode nowait', v_table);
            execute format('select not exists (select 1 from public.%I where run_id <> $1)',
                           v_table)
                into v_alone using p_run_id;
        exception when lock_not_available then
            v_alone := false;
        end;
        if v_alone then
            execute format('truncate public.%I', v_table);
        else
            execute format('delete from public.%I where run_id = $1', v_table) using p_run_id;
        end if;
    end loop;
end;
$$;
