-- The lines in the fact: the count the merges keep (audit.fact_line_count), or, when it was
-- forgotten (sql/054) or never kept (a warehouse older than it), a count of the fact, which
-- is then kept. The count is kept only while no one can write to the fact (a share lock, not
-- waited for): with a write under way the lines are counted and not kept.
create or replace function audit.fact_lines() returns bigint
language plpgsql
as $$
declare
    v_lines bigint;
begin
    select lines into v_lines from audit.fact_line_count;
    if found then
        return v_lines;
    end if;
    begin
        lock table staging.fact_operaciones_ventas in share mode nowait;
    exception when lock_not_available then
        return (select count(*) from staging.fact_operaciones_ventas);
    end;
    select count(*) into v_lines from staging.fact_operaciones_ventas;
    insert into audit.fact_line_count (lines) values (v_lines);
    return v_lines;
end;
$$;
