-- The fact's primary key, its foreign keys to both dimensions and the indexes on them (and the
-- one on source_key), in one place. staging.fact_secondary_structures(true) creates whatever is
-- missing (idempotent: the bootstrap calls it below); (false) drops the foreign keys and the
-- indexes, and with p_primary_key the primary key too. The merge drops them for a delivery that
-- is large next to the fact and creates them again in the same transaction: a foreign key checked
-- row by row costs two lookups per inserted line (about 10 s per million lines measured here)
-- and a primary key grown line by line in random order costs about 3.5 s per million more than
-- one built at once. Building the primary key afterwards checks every line in one pass (a
-- duplicate line key fails the merge, which rolls back). Until the merge commits, the fact is
-- locked.
-- The merge adds the foreign keys back without reading the fact again (p_validate => false: NOT
-- VALID). Nothing is left unchecked: every line the merge wrote took its keys from a join with
-- the dimensions in the same transaction (public.bulk_fact_operaciones_ventas_keyed), the lines
-- already there were held to the same rule when they were written, dropping the keys locked both
-- dimensions until the commit (no member can go meanwhile), and the publish gate fails the run if
-- one of its lines points at the unknown member. Validating re-proved that with a read of the whole fact per key (10M lines:
-- 4.9 + 5.8 s, in one process). PostgreSQL checks every later write against them as before;
-- `alter table ... validate constraint` (which blocks no reader or writer) marks them valid.
drop procedure if exists staging.fact_secondary_structures(boolean);
drop procedure if exists staging.fact_secondary_structures(boolean, boolean);

create or replace procedure staging.fact_secondary_structures(
    p_present boolean, p_primary_key boolean default false, p_validate boolean default true
)
language plpgsql
as $$
declare
    v_key text;
begin
    if not p_present then
        alter table staging.fact_operaciones_ventas
            drop constraint if exists fact_operaciones_ventas_cliente_key_fkey,
            drop constraint if exists fact_operaciones_ventas_inventario_key_fkey;
        drop index if exists staging.fact_operaciones_ventas_cliente_key_idx;
        drop index if exists staging.fact_operaciones_ventas_inventario_key_idx;
        drop index if exists staging.fact_operaciones_ventas_source_key_idx;
        if p_primary_key then
            alter table staging.fact_operaciones_ventas
                drop constraint if exists fact_operaciones_ventas_pkey;
        end if;
        return;
    end if;
    if not exists (select 1 from pg_constraint where conname = 'fact_operaciones_ventas_pkey') then
        alter table staging.fact_operaciones_ventas
            add constraint fact_operaciones_ventas_pkey primary key (line_key);
    end if;
    -- The foreign keys before their indexes: validating one (p_validate) reads the fact in its
    -- own order and hashes the dimension; with the index there, the planner may walk the index
    -- instead, one heap fetch per line in key order (10M lines, inventario_key: 15.8 s, not 3.3).
    foreach v_key in array array['cliente_key', 'inventario_key'] loop
        if not exists (select 1 from pg_constraint
                       where conname = format('fact_operaciones_ventas_%s_fkey', v_key)) then
            execute format('alter table staging.fact_operaciones_ventas '
                           'add constraint %I foreign key (%I) references staging.%I (%I)%s',
                           format('fact_operaciones_ventas_%s_fkey', v_key), v_key,
                           'dim_' || replace(v_key, '_key', ''), v_key,
                           case when p_validate then '' else ' not valid' end);
        end if;
    end loop;
    create index if not exists fact_operaciones_ventas_cliente_key_idx
        on staging.fact_operaciones_ventas (cliente_key);
    create index if not exists fact_operaciones_ventas_inventario_key_idx
        on staging.fact_operaciones_ventas (inventario_key);
    -- the lines a run wrote (its result notebook, 05_resultado, reads only those)
    create index if not exists fact_operaciones_ventas_source_key_idx
        on staging.fact_operaciones_ventas (source_key);
end;
$$;

call staging.fact_secondary_structures(true);
