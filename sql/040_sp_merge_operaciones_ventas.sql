-- Merge one run's transit rows into the star schema: dimensions first, then the fact.
-- * one run at a time (advisory lock), all in the caller's transaction: any error rolls back all;
-- * transit rows are deduplicated per key first (latest load wins), so MERGE never meets a
--   target row twice;
-- * only rows whose values changed are updated (IS DISTINCT FROM), so a re-run changes nothing;
-- * the run's transit rows are removed once merged.
create or replace procedure staging.sp_merge_operaciones_ventas(p_run_id text)
language plpgsql
as $$
declare
    v_started  timestamptz;
    v_before   bigint;
    v_affected bigint;
    v_inserted bigint;
begin
    if p_run_id is null or p_run_id = '' then
        raise exception 'sp_merge_operaciones_ventas: a run id is required';
    end if;
    perform pg_advisory_xact_lock(hashtext('staging.sp_merge_operaciones_ventas'));

    begin
        -- dim_inventario ---------------------------------------------------------------
        v_started := clock_timestamp();
        select count(*) into v_before from staging.dim_inventario;
        merge into staging.dim_inventario as d
        using (
            select distinct on (product_id)
                   product_id, product_name, category, sub_category, last_order_date
            from public.bulk_dim_inventario
            where run_id = p_run_id and product_id is not null
            order by product_id, last_order_date desc nulls last, bulk_seq desc
        ) as s
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
        select count(*) - v_before into v_inserted from staging.dim_inventario;
        call audit.record_merge(p_run_id, 'staging.dim_inventario', v_affected, v_inserted, v_started);

        -- dim_cliente ------------------------------------------------------------------
        v_started := clock_timestamp();
        select count(*) into v_before from staging.dim_cliente;
        merge into staging.dim_cliente as d
        using (
            select distinct on (customer_id)
                   customer_id, customer_name, segment, last_order_date
            from public.bulk_dim_cliente
            where run_id = p_run_id and customer_id is not null
            order by customer_id, last_order_date desc nulls last, bulk_seq desc
        ) as s
        on d.customer_id = s.customer_id
        when matched and s.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
             and (d.customer_name, d.segment, d.last_order_date)
                 is distinct from (s.customer_name, s.segment, s.last_order_date)
        then update set customer_name = s.customer_name, segment = s.segment,
                        last_order_date = s.last_order_date, run_id = p_run_id,
                        updated_at = now()
        when not matched then
            insert (customer_id, customer_name, segment, last_order_date, run_id)
            values (s.customer_id, s.customer_name, s.segment, s.last_order_date, p_run_id);
        get diagnostics v_affected = row_count;
        select count(*) - v_before into v_inserted from staging.dim_cliente;
        call audit.record_merge(p_run_id, 'staging.dim_cliente', v_affected, v_inserted, v_started);

        -- fact_operaciones_ventas --------------------------------------------------------
        v_started := clock_timestamp();
        select count(*) into v_before from staging.fact_operaciones_ventas;
        merge into staging.fact_operaciones_ventas as f
        using (
            select b.*,
                   coalesce(c.cliente_key, -1)    as cliente_key,
                   coalesce(i.inventario_key, -1) as inventario_key
            from (
                select distinct on (line_key) *
                from public.bulk_fact_operaciones_ventas
                where run_id = p_run_id
                order by line_key, bulk_seq desc
            ) as b
            left join staging.dim_cliente    as c on c.customer_id = b.customer_id
            left join staging.dim_inventario as i on i.product_id = b.product_id
        ) as s
        on f.line_key = s.line_key
        -- lineage columns (source_object, source_line, run_id) do not count as a change
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
        select count(*) - v_before into v_inserted from staging.fact_operaciones_ventas;
        call audit.record_merge(p_run_id, 'staging.fact_operaciones_ventas', v_affected, v_inserted, v_started);

        delete from public.bulk_fact_operaciones_ventas where run_id = p_run_id;
        delete from public.bulk_dim_cliente where run_id = p_run_id;
        delete from public.bulk_dim_inventario where run_id = p_run_id;
    exception when others then
        raise exception 'sp_merge_operaciones_ventas(%) failed, nothing was merged: % (SQLSTATE %)',
            p_run_id, sqlerrm, sqlstate;
    end;
end;
$$;
