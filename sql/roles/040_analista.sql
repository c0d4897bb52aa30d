-- Analysts read the sales view, and nothing else: not the fact and dimension tables under it
-- (the view reads them with its owner's rights), not the transit tables, not the audit schema,
-- and they write nothing. Run connected to the warehouse database, before sql/ (the grants on
-- what exists) and again after it (the view is made by sql/050_vw_operaciones_ventas.sql).
-- A new view for analysts is granted here by name: a default privilege on the tables of schema
-- staging would also open every table the pipeline creates there.
do $$
declare
    v_analyst text := current_setting('medallion.analyst_role');
begin
    if not has_database_privilege(v_analyst, current_database(), 'connect') then
        execute format('grant connect on database %I to %I', current_database(), v_analyst);
    end if;
    if to_regnamespace('staging') is not null
       and not has_schema_privilege(v_analyst, 'staging', 'usage') then
        execute format('grant usage on schema staging to %I', v_analyst);
    end if;
    if to_regclass('staging.vw_operaciones_ventas') is not null
       and not has_table_privilege(v_analyst, 'staging.vw_operaciones_ventas', 'select') then
        execute format('grant select on staging.vw_operaciones_ventas to %I', v_analyst);
    end if;
end $$;
