-- Remove a published run's transit rows (after the merge's transaction has committed). A run
-- that is not published keeps them: the merge's retry needs them, and a person inspecting a
-- failed gate too.
create or replace procedure staging.sp_clear_transit(p_run_id text)
language plpgsql
as $$
begin
    if not staging.run_published(p_run_id) then
        raise exception 'sp_clear_transit(%): the run is not published; its transit rows are kept',
            p_run_id;
    end if;
    delete from public.bulk_fact_operaciones_ventas where run_id = p_run_id;
    delete from public.bulk_dim_cliente where run_id = p_run_id;
    delete from public.bulk_dim_inventario where run_id = p_run_id;
end;
$$;
