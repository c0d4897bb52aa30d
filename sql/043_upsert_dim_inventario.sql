-- The same as merge_dim_inventario with INSERT ... ON CONFLICT (PostgreSQL < 15, or forced).
create or replace procedure staging.upsert_dim_inventario(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
begin
    with changed as (
        insert into staging.dim_inventario as d
            (product_id, product_name, category, sub_category, last_order_date, run_id)
        select product_id, product_name, category, sub_category, last_order_date, p_run_id
        from public.bulk_dim_inventario_latest
        where run_id = p_run_id
        on conflict (product_id) do update
            set product_name = excluded.product_name, category = excluded.category,
                sub_category = excluded.sub_category, last_order_date = excluded.last_order_date,
                run_id = excluded.run_id, updated_at = now()
            where excluded.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
              and (d.product_name, d.category, d.sub_category, d.last_order_date)
                  is distinct from (excluded.product_name, excluded.category,
                                    excluded.sub_category, excluded.last_order_date)
        returning (xmax = 0) as inserted  -- xmax is 0 on a freshly inserted row version
    )
    select count(*) filter (where inserted), count(*) filter (where not inserted)
    into p_inserted, p_updated
    from changed;
end;
$$;
