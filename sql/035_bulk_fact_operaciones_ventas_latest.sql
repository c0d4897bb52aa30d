-- One transit row per run and line key (the latest load wins: a later delivery corrects an
-- earlier line), with the surrogate keys of its customer version and product resolved.
-- A line whose customer or product is missing points at the unknown member (-1).
-- Made again each time (b.* is fixed when a view is made: a column added to the transit table
-- comes with it; nothing depends on this view, the merge names it at run time).
drop view if exists public.bulk_fact_operaciones_ventas_latest;
create view public.bulk_fact_operaciones_ventas_latest as
select b.*,
       coalesce(c.cliente_key, -1)    as cliente_key,
       coalesce(i.inventario_key, -1) as inventario_key
from public.bulk_fact_operaciones_ventas as b
left join staging.dim_cliente as c
    on c.customer_id = b.customer_id
   and b.order_date >= c.valid_from and b.order_date < c.valid_to
left join staging.dim_inventario as i
    on i.product_id = b.product_id
-- the latest row per (run, line key): an anti-join on narrow keys, not a sort of whole rows
where b.line_key is not null
  and not exists (select 1 from public.bulk_fact_operaciones_ventas as later
                  where later.run_id = b.run_id and later.line_key = b.line_key
                    and later.bulk_seq > b.bulk_seq);
