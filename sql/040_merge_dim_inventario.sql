-- Products of a run: insert new ones, update those whose attributes changed, but only from an
-- order at least as recent as the one the current attributes came from (latest order wins).
create or replace procedure staging.merge_dim_inventario(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
declare
    v_affected bigint;
begin
    select count(*) into p_inserted
    from public.bulk_dim_inventario_latest as s
    where s.run_id = p_run_id
      and not exists (select 1 from staging.dim_inventario d where d.product_id = s.product_id);

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
    p_updated := v_affected - p_inserted;
end;
$$;
