-- One transit row per run and product: the latest order's attributes, then the latest load.
-- Merging from this (never from the raw transit table) means MERGE never meets a row twice.
create or replace view public.bulk_dim_inventario_latest as
select distinct on (run_id, product_id)
       run_id, product_id, product_name, category, sub_category, last_order_date
from public.bulk_dim_inventario
where product_id is not null
order by run_id, product_id, last_order_date desc nulls last, bulk_seq desc;
