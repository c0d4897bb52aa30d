-- Who else may do what in the warehouse database (run connected to it). PostgreSQL lets every
-- role (PUBLIC) connect to a new database, make temporary tables there and run every new
-- function: here only the pipeline (the owner) and the analysts' group connect, and the
-- pipeline's routines run for the pipeline alone.
do $$
declare
    v_pipeline text := current_setting('medallion.pipeline_role');
    v_routine  record;
begin
    if has_database_privilege('public', current_database(), 'connect')
       or has_database_privilege('public', current_database(), 'temporary') then
        execute format('revoke connect, temporary on database %I from public', current_database());
    end if;
    if has_schema_privilege('public', 'public', 'create') then
        revoke create on schema public from public;  -- PostgreSQL < 15 granted it
    end if;

    -- routines the pipeline creates from now on, and those it has
    if not exists (select 1 from pg_default_acl
                   where defaclrole = to_regrole(v_pipeline) and defaclnamespace = 0
                     and defaclobjtype = 'f') then
        execute format('alter default privileges for role %I revoke execute on routines '
                       'from public', v_pipeline);
    end if;
    for v_routine in
        select p.oid::regprocedure::text as name
        from pg_proc as p
        where p.proowner = to_regrole(v_pipeline)
          and has_function_privilege('public', p.oid, 'execute')
    loop
        execute format('revoke execute on routine %s from public', v_routine.name);
    end loop;
end $$;
