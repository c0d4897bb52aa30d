-- One row per fact line with customer and product attributes, for analysis.
create or replace view staging.vw_operaciones_ventas as
select
    f.line_key,
    f.order_id,
    f.order_date,
    extract(year from f.order_date)::int  as order_year,
    extract(month from f.order_date)::int as order_month,
    f.ship_date,
    f.ship_mode,
    c.customer_id,
    c.customer_name,
    c.segment,
    f.country,
    f.city,
    f.state,
    f.postal_code,
    f.region,
    i.product_id,
    i.product_name,
    i.category,
    i.sub_category,
    f.sales,
    f.quantity,
    f.discount,
    f.profit
from staging.fact_operaciones_ventas as f
join staging.dim_cliente    as c on c.cliente_key = f.cliente_key
join staging.dim_inventario as i on i.inventario_key = f.inventario_key;
