-- Remove a published run's transit rows (after the merge's transaction has committed). A run
-- that is not published keeps them: the merge's retry needs them, and a person inspecting a
-- failed gate too.
create or replace procedure staging.sp_clear_transit(p_run_id text)
language plpgsql
as $$
declare
    v_table text;
begin
    if not staging.run_published(p_run_id) then
        raise exception 'sp_clear_transit(%): the run is not published; its transit rows are kept',
            p_run_id;
    end if;
    foreach v_table in array staging.transit_tables() loop
        execute format('delete from public.%I where run_id = $1', v_table) using p_run_id;
    end loop;
end;
$$;
