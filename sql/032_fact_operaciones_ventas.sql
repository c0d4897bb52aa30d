-- One row per source sales line; line_key is the contract's line key (the source's row id, or
-- order id + position in the order). Measures keep the delivered decimals (numeric, no float).
create table if not exists staging.fact_operaciones_ventas (
    line_key       text           not null,  -- primary key: sql/047
    row_id         text,
    order_id       text           not null,
    order_date     date           not null,
    ship_date      date,
    ship_mode      text,
    cliente_key    bigint         not null,
    inventario_key bigint         not null,
    country        text,
    city           text,
    state          text,
    postal_code    text,
    region         text,
    sales          numeric(18, 4) not null,
    quantity       bigint         not null,
    discount       numeric(18, 4),
    profit         numeric(18, 4),
    source_object  text,
    source_line    bigint,
    run_id         text,
    created_at     timestamptz    not null default now(),
    updated_at     timestamptz    not null default now()
);
-- Primary key, foreign keys to both dimensions and their indexes:
-- sql/047_fact_secondary_structures.sql.
