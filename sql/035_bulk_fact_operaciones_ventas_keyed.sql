-- The run's transit rows with the surrogate keys of their customer version and product
-- resolved (a line whose customer or product is missing points at the unknown member, -1).
-- A first load inserts these as they are (staging.insert_fact_operaciones_ventas); a merge takes
-- the latest of them per line key (public.bulk_fact_operaciones_ventas_latest).
-- Made again each time (b.* is fixed when a view is made: a column added to the transit table
-- comes with it; the latest view, which depends on it, is made again right after).
drop view if exists public.bulk_fact_operaciones_ventas_latest;
drop view if exists public.bulk_fact_operaciones_ventas_keyed;
create view public.bulk_fact_operaciones_ventas_keyed as
select b.*,
       coalesce(c.cliente_key, -1)    as cliente_key,
       coalesce(i.inventario_key, -1) as inventario_key
from public.bulk_fact_operaciones_ventas as b
left join staging.dim_cliente as c
    on c.customer_id = b.customer_id
   and b.order_date >= c.valid_from and b.order_date < c.valid_to
left join staging.dim_inventario as i
    on i.product_id = b.product_id
where b.line_key is not null;
