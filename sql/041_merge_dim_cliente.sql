-- Customers of a run, SCD type 1: one current row per customer, overwritten when its
-- attributes change (from an order at least as recent as the current one's).
create or replace procedure staging.merge_dim_cliente(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
declare
    v_affected bigint;
begin
    select count(*) into p_inserted
    from public.bulk_dim_cliente_latest as s
    where s.run_id = p_run_id
      and not exists (select 1 from staging.dim_cliente d
                      where d.customer_id = s.customer_id and d.is_current);

    merge into staging.dim_cliente as d
    using (select * from public.bulk_dim_cliente_latest where run_id = p_run_id) as s
    on d.customer_id = s.customer_id and d.is_current
    when matched and s.last_order_date >= coalesce(d.last_order_date, '-infinity'::date)
         and (d.customer_name, d.segment, d.last_order_date)
             is distinct from (s.customer_name, s.segment, s.last_order_date)
    then update set customer_name = s.customer_name, segment = s.segment,
                    last_order_date = s.last_order_date, run_id = p_run_id, updated_at = now()
    when not matched then
        insert (customer_id, customer_name, segment, last_order_date, run_id)
        values (s.customer_id, s.customer_name, s.segment, s.last_order_date, p_run_id);
    get diagnostics v_affected = row_count;
    p_updated := v_affected - p_inserted;
end;
$$;
