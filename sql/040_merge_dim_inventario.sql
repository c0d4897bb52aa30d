-- Products of a run: insert new ones, update those whose attributes changed, but only from an
-- order at least as recent as the one the current attributes came from (latest order wins).
-- A first load (the dimension holds only its unknown member, and the run does not name it)
-- compares nothing: every product of the run is inserted, and the merge's own count is the
-- run's (p_source), so the run's products are read once instead of three times.
drop procedure if exists staging.merge_dim_inventario(text, bigint, bigint);
create or replace procedure staging.merge_dim_inventario(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null,
    inout p_source bigint default null
)
language plpgsql
as $$
declare
    v_affected bigint;
    v_first    boolean := false;
begin
    if not exists (select 1 from staging.dim_inventario where inventario_key <> -1) then
        v_first := not exists (select 1 from public.bulk_dim_inventario as s
                               join staging.dim_inventario as d using (product_id)
                               where s.run_id = p_run_id);
    end if;
    if not v_first then
        select count(*) into p_inserted
        from public.bulk_dim_inventario_latest as s
        where s.run_id = p_run_id
          and not exists (select 1 from staging.dim_inventario d
                          where d.product_id = s.product_id);
    end if;

    merge into staging.dim_inventario as d
    using (select * from public.bulk_dim_inventario_latest where run_id = p_run_id) as s
    on d.product_id = s.product_id
    when matched and s.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
         and (d.product_name, d.category, d.sub_category, d.last_order_date)
             is distinct from (s.product_name, s.category, s.sub_category, s.last_order_date)
    then update set product_name = s.product_name, category = s.category,
                    sub_category = s.sub_category, last_order_date = s.last_order_date,
                    run_id = p_run_id, updated_at = now()
    when not matched then
        insert (product_id, product_name, category, sub_category, last_order_date, run_id)
        values (s.product_id, s.product_name, s.category, s.sub_category, s.last_order_date,
                p_run_id);
    get diagnostics v_affected = row_count;
    if v_first then  -- all of the run's products, all new
        p_inserted := v_affected;
        p_source := v_affected;
    end if;
    p_updated := v_affected - p_inserted;
end;
$$;
