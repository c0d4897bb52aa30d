-- One transit row per run and customer: the latest order's attributes, then the latest load.
-- first_order_date is where a new version starts (SCD type 2).
create or replace view public.bulk_dim_cliente_latest as
select distinct on (run_id, customer_id)
       run_id, customer_id, customer_name, segment, first_order_date, last_order_date
from public.bulk_dim_cliente
where customer_id is not null
order by run_id, customer_id, last_order_date desc nulls last, bulk_seq desc;
