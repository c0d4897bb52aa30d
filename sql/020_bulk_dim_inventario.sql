-- Transit table for gold dim_inventario. No keys and no indexes: it only receives COPY and is
-- read once by the merge. bulk_seq keeps the load order so the merge can keep the latest row.
create unlogged table if not exists public.bulk_dim_inventario (
    product_id      text,
    product_name    text,
    category        text,
    sub_category    text,
    last_order_date date,
    run_id          text not null,
    bulk_seq        bigint generated always as identity,
    loaded_at       timestamptz not null default now()
);

-- Transit rows are a copy of gold, reloaded by a retry: no WAL needed (existing tables too).
alter table public.bulk_dim_inventario set unlogged;
