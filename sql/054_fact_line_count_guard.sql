-- A write to the fact that is not a merge's (a fix by hand, a migration) forgets the fact's
-- line count (audit.fact_line_count): the next reader counts the lines again. The merge marks
-- its own transaction (medallion.merging), whose writes it counts itself. Fired once per
-- statement, not per line.
create or replace function audit.forget_fact_line_count() returns trigger
language plpgsql
security definer  -- whoever writes to the fact: the count goes
set search_path = pg_catalog, pg_temp
as $$
begin
    if current_setting('medallion.merging', true) is distinct from 'on' then
        delete from audit.fact_line_count;
    end if;
    return null;
end;
$$;

create or replace trigger fact_line_count_forgotten
    after insert or delete or truncate on staging.fact_operaciones_ventas
    for each statement execute function audit.forget_fact_line_count();
