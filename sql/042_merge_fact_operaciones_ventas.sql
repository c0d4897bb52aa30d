-- Lines of a run: insert new line keys, update lines whose values changed (a corrected line);
-- lineage columns alone are not a change.
create or replace procedure staging.merge_fact_operaciones_ventas(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
declare
    v_affected bigint;
begin
    select count(distinct s.line_key) into p_inserted  -- the line keys new to staging
    from public.bulk_fact_operaciones_ventas as s
    where s.run_id = p_run_id
      and not exists (select 1 from staging.fact_operaciones_ventas f
                      where f.line_key = s.line_key);

    merge into staging.fact_operaciones_ventas as f
    using (select * from public.bulk_fact_operaciones_ventas_latest where run_id = p_run_id) as s
    on f.line_key = s.line_key
    when matched and (f.row_id, f.order_id, f.order_date, f.ship_date, f.ship_mode,
                      f.cliente_key, f.inventario_key, f.country, f.city, f.state,
                      f.postal_code, f.region, f.sales, f.quantity, f.discount, f.profit)
         is distinct from (s.row_id, s.order_id, s.order_date, s.ship_date, s.ship_mode,
                      s.cliente_key, s.inventario_key, s.country, s.city, s.state,
                      s.postal_code, s.region, s.sales, s.quantity, s.discount, s.profit)
    then update set row_id = s.row_id, order_id = s.order_id, order_date = s.order_date,
                    ship_date = s.ship_date, ship_mode = s.ship_mode,
                    cliente_key = s.cliente_key, inventario_key = s.inventario_key,
                    country = s.country, city = s.city, state = s.state,
                    postal_code = s.postal_code, region = s.region, sales = s.sales,
                    quantity = s.quantity, discount = s.discount, profit = s.profit,
                    source_object = s.source_object, source_line = s.source_line,
                    run_id = s.run_id, updated_at = now()
    when not matched then
        insert (line_key, row_id, order_id, order_date, ship_date, ship_mode, cliente_key,
                inventario_key, country, city, state, postal_code, region, sales, quantity,
                discount, profit, source_object, source_line, run_id)
        values (s.line_key, s.row_id, s.order_id, s.order_date, s.ship_date, s.ship_mode,
                s.cliente_key, s.inventario_key, s.country, s.city, s.state, s.postal_code,
                s.region, s.sales, s.quantity, s.discount, s.profit, s.source_object,
                s.source_line, s.run_id);
    get diagnostics v_affected = row_count;
    p_updated := v_affected - p_inserted;
end;
$$;
