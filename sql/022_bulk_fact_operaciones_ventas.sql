-- Transit table for gold fact_operaciones_ventas: natural keys only; the merge resolves the
-- surrogate keys of the dimensions. Amounts are numeric, never float.
create unlogged table if not exists public.bulk_fact_operaciones_ventas (
    line_key      text,
    row_id        text,
    order_id      text,
    order_date    date,
    ship_date     date,
    ship_mode     text,
    customer_id   text,
    product_id    text,
    country       text,
    city          text,
    state         text,
    postal_code   text,
    region        text,
    sales         numeric(18, 4),
    quantity      bigint,
    discount      numeric(18, 4),
    profit        numeric(18, 4),
    source_object text,
    source_line   bigint,
    run_id        text not null,
    bulk_seq      bigint generated always as identity,
    loaded_at     timestamptz not null default now()
);

-- Transit rows are a copy of gold, reloaded by a retry: no WAL needed (existing tables too).
alter table public.bulk_fact_operaciones_ventas set unlogged;
