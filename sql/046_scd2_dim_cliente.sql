-- Customers of a run, SCD type 2 (optional, `scd_type_cliente: 2`): a change of name or segment
-- closes the current version (valid_to = first order date with the new attributes) and opens a
-- new one from that date; facts of later orders point at the new version. A customer's first
-- version is valid from -infinity, so no order is ever left without a version. A change that
-- starts before the current version (late, older lines) corrects that version in place.
-- p_inserted = new customers, p_updated = customers changed (new version or correction).
create or replace procedure staging.scd2_dim_cliente(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
declare
    v_versions  bigint;
    v_corrected bigint;
begin
    insert into staging.dim_cliente (customer_id, customer_name, segment, last_order_date, run_id)
    select s.customer_id, s.customer_name, s.segment, s.last_order_date, p_run_id
    from public.bulk_dim_cliente_latest as s
    where s.run_id = p_run_id
      and not exists (select 1 from staging.dim_cliente d
                      where d.customer_id = s.customer_id and d.is_current);
    get diagnostics p_inserted = row_count;

    -- Close the current version and open the new one, row by row in one statement (the
    -- insert reads the update's rows, so each close happens before its new version).
    with closed as (
        update staging.dim_cliente as d
        set valid_to = s.first_order_date, is_current = false, updated_at = now()
        from public.bulk_dim_cliente_latest as s
        where s.run_id = p_run_id and d.customer_id = s.customer_id and d.is_current
          and (d.customer_name, d.segment) is distinct from (s.customer_name, s.segment)
          and s.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
          and s.first_order_date > d.valid_from
        returning s.customer_id, s.customer_name, s.segment, s.last_order_date,
                  s.first_order_date
    )
    insert into staging.dim_cliente
        (customer_id, customer_name, segment, last_order_date, valid_from, run_id)
    select customer_id, customer_name, segment, last_order_date, first_order_date, p_run_id
    from closed;
    get diagnostics v_versions = row_count;

    update staging.dim_cliente as d
    set customer_name = s.customer_name, segment = s.segment,
        last_order_date = s.last_order_date, run_id = p_run_id, updated_at = now()
    from public.bulk_dim_cliente_latest as s
    where s.run_id = p_run_id and d.customer_id = s.customer_id and d.is_current
      and s.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
      and (d.customer_name, d.segment, d.last_order_date)
          is distinct from (s.customer_name, s.segment, s.last_order_date);
    get diagnostics v_corrected = row_count;

    -- Facts already in the warehouse whose order falls in a new version move to it.
    update staging.fact_operaciones_ventas as f
    set cliente_key = v.cliente_key, updated_at = now()
    from staging.dim_cliente as old
    join staging.dim_cliente as v on v.customer_id = old.customer_id
    where f.cliente_key = old.cliente_key
      and v.run_id = p_run_id and v.valid_from > '-infinity'::date
      and f.order_date >= v.valid_from and f.order_date < v.valid_to
      and f.cliente_key <> v.cliente_key;

    p_updated := v_versions + v_corrected;
end;
$$;
