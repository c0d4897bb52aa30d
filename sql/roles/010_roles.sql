-- The warehouse's roles, kept right by the superuser (never by the pipeline, which may not create
-- roles): the pipeline's own login and a read-only group for analysts. The names come from the
-- settings medallion.pipeline_role and medallion.analyst_role, set by the caller
-- (medallion.services.apply_roles, for the embedded server and for docker compose). No password
-- is ever written here: the caller sets the pipeline's with a bound parameter.
-- Idempotent, and only what differs is changed (two sessions starting at once do not fight over
-- the same catalog rows).
do $$
declare
    v_pipeline text := current_setting('medallion.pipeline_role');
    v_analyst  text := current_setting('medallion.analyst_role');
    v_grant    record;
begin
    -- The pipeline logs in and owns its database, nothing more: no superuser, no roles, no
    -- databases (the embedded server's test databases are made for it by the superuser), no
    -- replication, and row security applies to it.
    if not exists (select 1 from pg_roles where rolname = v_pipeline) then
        execute format('create role %I login', v_pipeline);
    end if;
    if exists (select 1 from pg_roles where rolname = v_pipeline
               and (not rolcanlogin or rolsuper or rolcreatedb or rolcreaterole
                    or rolreplication or rolbypassrls)) then
        execute format('alter role %I login nosuperuser nocreatedb nocreaterole noreplication '
                       'nobypassrls', v_pipeline);
    end if;

    -- Analysts: a group without login; each analyst's own login is granted it.
    if not exists (select 1 from pg_roles where rolname = v_analyst) then
        execute format('create role %I nologin', v_analyst);
    end if;
    if exists (select 1 from pg_roles where rolname = v_analyst
               and (rolcanlogin or rolsuper or rolcreatedb or rolcreaterole
                    or rolreplication or rolbypassrls)) then
        execute format('alter role %I nologin nosuperuser nocreatedb nocreaterole noreplication '
                       'nobypassrls', v_analyst);
    end if;

    -- Neither may read or write the server's files or run programs on it (COPY to or from a
    -- file, pg_read_file), nor become a role that may (SET ROLE to a superuser, for one):
    -- such memberships are taken back, whoever granted them.
    for v_grant in
        select m.roleid::regrole::text as granted, m.member::regrole::text as member,
               m.grantor::regrole::text as grantor
        from pg_auth_members as m
        join pg_roles as r on r.oid = m.roleid
        where m.member in (to_regrole(v_pipeline), to_regrole(v_analyst))
          and (r.rolname in ('pg_read_server_files', 'pg_write_server_files',
                             'pg_execute_server_program')
               or r.rolsuper or r.rolcreaterole or r.rolcreatedb)
    loop
        execute format('revoke %s from %s granted by %s',
                       v_grant.granted, v_grant.member, v_grant.grantor);
    end loop;
end $$;
