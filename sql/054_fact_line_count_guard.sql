-- Lines inserted into the fact or deleted from it other than by the merge (a fix by hand, a
-- migration) make the fact's line count (audit.fact_line_count) forgotten: the next reader
-- counts the lines again. The merge marks its own transaction (medallion.merging), whose lines
-- it counts itself. Fired once per statement, not per line; an update changes no count.
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
