-- The same as merge_fact_operaciones_ventas with INSERT ... ON CONFLICT (PostgreSQL < 15).
create or replace procedure staging.upsert_fact_operaciones_ventas(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
begin
    with changed as (
        insert into staging.fact_operaciones_ventas as f
            (line_key, row_id, order_id, order_date, ship_date, ship_mode, cliente_key,
             inventario_key, country, city, state, postal_code, region, sales, quantity,
             discount, profit, source_object, source_line, run_id)
        select line_key, row_id, order_id, order_date, ship_date, ship_mode, cliente_key,
               inventario_key, country, city, state, postal_code, region, sales, quantity,
               discount, profit, source_object, source_line, run_id
        from public.bulk_fact_operaciones_ventas_latest
        where run_id = p_run_id
        on conflict (line_key) do update
            set row_id = excluded.row_id, order_id = excluded.order_id,
                order_date = excluded.order_date, ship_date = excluded.ship_date,
                ship_mode = excluded.ship_mode, cliente_key = excluded.cliente_key,
                inventario_key = excluded.inventario_key, country = excluded.country,
                city = excluded.city, state = excluded.state,
                postal_code = excluded.postal_code, region = excluded.region,
                sales = excluded.sales, quantity = excluded.quantity,
                discount = excluded.discount, profit = excluded.profit,
                source_object = excluded.source_object, source_line = excluded.source_line,
                run_id = excluded.run_id, updated_at = now()
            where (f.row_id, f.order_id, f.order_date, f.ship_date, f.ship_mode, f.cliente_key,
                   f.inventario_key, f.country, f.city, f.state, f.postal_code, f.region,
                   f.sales, f.quantity, f.discount, f.profit)
                  is distinct from
                  (excluded.row_id, excluded.order_id, excluded.order_date, excluded.ship_date,
                   excluded.ship_mode, excluded.cliente_key, excluded.inventario_key,
                   excluded.country, excluded.city, excluded.state, excluded.postal_code,
                   excluded.region, excluded.sales, excluded.quantity, excluded.discount,
                   excluded.profit)
        returning (xmax = 0) as inserted
    )
    select count(*) filter (where inserted), count(*) filter (where not inserted)
    into p_inserted, p_updated
    from changed;
end;
$$;
