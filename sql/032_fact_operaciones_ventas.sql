-- One row per source sales line; line_key is the contract's line key (the source's row id, or
-- order id + position in the order). Measures keep the delivered decimals (numeric, no float).
-- line_key compares byte by byte (collation "C", as in the transit table, sql/022): its primary
-- key is built and searched with plain byte comparisons, where the database's own collation
-- compares through the C library's strcoll (10M lines: the key built in 3.7-4.9 s instead of
-- 9.0-15.4 s, measured). A line key is an identifier: no one sorts it as words.
create table if not exists staging.fact_operaciones_ventas (
    line_key       text collate "C" not null,  -- primary key: sql/047
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
    source_key     int            not null,  -- staging.fact_sources: the run and the file
    source_line    bigint,
    created_at     timestamptz    not null default now(),
    updated_at     timestamptz    not null default now()
);
-- Primary key, foreign keys to both dimensions and their indexes:
-- sql/047_fact_secondary_structures.sql.

-- line_key of a fact made before it compared byte by byte: changed in place (no rewrite of the
-- lines; the primary key is built again). The view over it (sql/050) is made again from its own
-- definition, with its grants (the analysts'), in the same transaction.
do $$
declare
    v_view       regclass := to_regclass('staging.vw_operaciones_ventas');
    v_definition text;
    v_acl        aclitem[];
    v_grant      record;
begin
    if (select c.collname from pg_attribute as a join pg_collation as c on c.oid = a.attcollation
        where a.attrelid = 'staging.fact_operaciones_ventas'::regclass
          and a.attname = 'line_key') = 'C' then
        return;
    end if;
    if v_view is not null then
        select pg_get_viewdef(v_view), relacl into v_definition, v_acl
        from pg_class where oid = v_view;
        drop view staging.vw_operaciones_ventas;
    end if;
    alter table staging.fact_operaciones_ventas alter column line_key type text collate "C";
    if v_view is not null then
        execute 'create view staging.vw_operaciones_ventas as ' || v_definition;
        for v_grant in select grantee, privilege_type, is_grantable
                       from aclexplode(v_acl)  -- none when null
                       where grantee <> (select relowner from pg_class
                                         where oid = 'staging.vw_operaciones_ventas'::regclass)
        loop
            execute format('grant %s on staging.vw_operaciones_ventas to %s%s',
                           v_grant.privilege_type,
                           case when v_grant.grantee = 0 then 'public'
                                else v_grant.grantee::regrole::text end,
                           case when v_grant.is_grantable then ' with grant option' else '' end);
        end loop;
    end if;
end $$;

-- A fact made before its lines named their source by key (sql/015) carries the run id and the
-- file's key in every line: both go to staging.fact_sources and each line gets its key, once,
-- in the bootstrap that brings this file (10M lines: a few minutes; the table keeps the old
-- lines' space until a `vacuum full staging.fact_operaciones_ventas`). The index on run_id goes
-- with its column; sql/047 builds the one on source_key.
do $$
begin
    if not exists (select 1 from pg_attribute
                   where attrelid = 'staging.fact_operaciones_ventas'::regclass
                     and attname = 'run_id' and not attisdropped) then
        return;
    end if;
    insert into staging.fact_sources (run_id, source_object)
    select distinct coalesce(run_id, ''), coalesce(source_object, '')
    from staging.fact_operaciones_ventas
    on conflict do nothing;
    alter table staging.fact_operaciones_ventas add column source_key int;
    update staging.fact_operaciones_ventas as f set source_key = s.source_key
    from staging.fact_sources as s
    where s.run_id = coalesce(f.run_id, '') and s.source_object = coalesce(f.source_object, '');
    alter table staging.fact_operaciones_ventas
        alter column source_key set not null,
        drop column run_id,
        drop column source_object;
end $$;
