-- The same as merge_dim_cliente with INSERT ... ON CONFLICT (PostgreSQL < 15, or forced).
create or replace procedure staging.upsert_dim_cliente(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
begin
    with changed as (
        insert into staging.dim_cliente as d
            (customer_id, customer_name, segment, last_order_date, run_id)
        select customer_id, customer_name, segment, last_order_date, p_run_id
        from public.bulk_dim_cliente_latest
        where run_id = p_run_id
        on conflict (customer_id) where is_current do update
            set customer_name = excluded.customer_name, segment = excluded.segment,
                last_order_date = excluded.last_order_date, run_id = excluded.run_id,
                updated_at = now()
            where excluded.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
              and (d.customer_name, d.segment, d.last_order_date)
                  is distinct from (excluded.customer_name, excluded.segment,
                                    excluded.last_order_date)
        returning (xmax = 0) as inserted
    )
    select count(*) filter (where inserted), count(*) filter (where not inserted)
    into p_inserted, p_updated
    from changed;
end;
$$;
