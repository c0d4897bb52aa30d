-- The fact's foreign keys to both dimensions and the indexes on them, in one place.
-- staging.fact_secondary_structures(true) creates whatever is missing (idempotent: the bootstrap
-- calls it below); (false) drops them. The merge drops them for a delivery that is large next to
-- the fact and creates them again in the same transaction: a foreign key checked row by row
-- costs two lookups per inserted line (about 10 s per million lines measured here), while adding
-- it back validates every line in one join. Until the merge commits, the fact is locked.
create or replace procedure staging.fact_secondary_structures(p_present boolean)
language plpgsql
as $$
begin
    if not p_present then
        alter table staging.fact_operaciones_ventas
            drop constraint if exists fact_operaciones_ventas_cliente_key_fkey,
            drop constraint if exists fact_operaciones_ventas_inventario_key_fkey;
        drop index if exists staging.fact_operaciones_ventas_cliente_key_idx;
        drop index if exists staging.fact_operaciones_ventas_inventario_key_idx;
        return;
    end if;
    create index if not exists fact_operaciones_ventas_cliente_key_idx
        on staging.fact_operaciones_ventas (cliente_key);
    create index if not exists fact_operaciones_ventas_inventario_key_idx
        on staging.fact_operaciones_ventas (inventario_key);
    if not exists (select 1 from pg_constraint
                   where conname = 'fact_operaciones_ventas_cliente_key_fkey') then
        alter table staging.fact_operaciones_ventas
            add constraint fact_operaciones_ventas_cliente_key_fkey
            foreign key (cliente_key) references staging.dim_cliente (cliente_key);
    end if;
    if not exists (select 1 from pg_constraint
                   where conname = 'fact_operaciones_ventas_inventario_key_fkey') then
        alter table staging.fact_operaciones_ventas
            add constraint fact_operaciones_ventas_inventario_key_fkey
            foreign key (inventario_key) references staging.dim_inventario (inventario_key);
    end if;
end;
$$;

call staging.fact_secondary_structures(true);
