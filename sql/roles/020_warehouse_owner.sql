-- The warehouse database and everything in it belong to the pipeline's role, so that sql/ (create,
-- create or replace, drop ... if exists, alter table ... set unlogged) runs as that role. Run
-- connected to the warehouse database.
-- A database made by an older version of the embedded services belongs to the superuser, with
-- every schema, table, view and routine in it: each is handed over here, one by one (REASSIGN
-- OWNED BY is refused for the bootstrap superuser). Only superusers' objects move; another
-- role's objects stay its own. Nothing is altered that is right already: ALTER ... OWNER locks
-- its table even when the owner does not change.
do $$
declare
    v_pipeline text := current_setting('medallion.pipeline_role');
    v_object   record;
begin
    if (select datdba from pg_database where datname = current_database())
       <> to_regrole(v_pipeline) then
        execute format('alter database %I owner to %I', current_database(), v_pipeline);
    end if;

    -- schemas; public belongs to pg_database_owner (PostgreSQL >= 15), which is the pipeline now
    for v_object in
        select n.oid::regnamespace::text as name
        from pg_namespace as n
        join pg_roles as r on r.oid = n.nspowner
        where r.rolsuper
          and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
    loop
        execute format('alter schema %s owner to %I', v_object.name, v_pipeline);
    end loop;

    -- tables (the transit tables public.bulk_* too), views, sequences of their own, standalone
    -- composite types; indexes, TOAST tables and the sequences of identity columns follow
    -- their table
    for v_object in
        select c.oid::regclass::text as name,
               case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                              when 'S' then 'sequence' when 'f' then 'foreign table'
                              when 'c' then 'type' else 'table' end as kind
        from pg_class as c
        join pg_namespace as n on n.oid = c.relnamespace
        join pg_roles as r on r.oid = c.relowner
        where r.rolsuper
          and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
          and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f', 'c')
          and not exists (select 1 from pg_depend as d
                          where d.classid = 'pg_class'::regclass and d.objid = c.oid
                            and (d.deptype = 'e'  -- a member of an extension
                                 or (c.relkind = 'S' and d.deptype in ('a', 'i'))))
    loop
        execute format('alter %s %s owner to %I', v_object.kind, v_object.name, v_pipeline);
    end loop;

    -- functions and procedures
    for v_object in
        select p.oid::regprocedure::text as name
        from pg_proc as p
        join pg_namespace as n on n.oid = p.pronamespace
        join pg_roles as r on r.oid = p.proowner
        where r.rolsuper
          and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
          and not exists (select 1 from pg_depend as d
                          where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                            and d.deptype = 'e')
    loop
        execute format('alter routine %s owner to %I', v_object.name, v_pipeline);
    end loop;

    -- domains, enums and ranges
    for v_object in
        select t.oid::regtype::text as name
        from pg_type as t
        join pg_namespace as n on n.oid = t.typnamespace
        join pg_roles as r on r.oid = t.typowner
        where r.rolsuper and t.typtype in ('d', 'e', 'r')
          and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
          and not exists (select 1 from pg_depend as d
                          where d.classid = 'pg_type'::regclass and d.objid = t.oid
                            and d.deptype = 'e')
    loop
        execute format('alter type %s owner to %I', v_object.name, v_pipeline);
    end loop;
end $$;
