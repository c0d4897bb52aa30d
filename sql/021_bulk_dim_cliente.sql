-- Transit table for gold dim_cliente (see bulk_dim_inventario for the conventions).
create unlogged table if not exists public.bulk_dim_cliente (
    customer_id     text,
    customer_name   text,
    segment         text,
    last_order_date date,
    run_id          text not null,
    bulk_seq        bigint generated always as identity,
    loaded_at       timestamptz not null default now()
);

-- Where the delivered attributes start (the new version's valid_from with SCD type 2).
alter table public.bulk_dim_cliente add column if not exists first_order_date date;

-- Transit rows are a copy of gold, reloaded by a retry: no WAL needed (existing tables too).
alter table public.bulk_dim_cliente set unlogged;
