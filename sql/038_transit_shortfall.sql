-- What is missing from a run's transit rows, or null when they are complete: per table, the rows
-- notebook 04 loaded from gold (audit.run_log, step 'load', one row per transit table) against
-- the rows there now. PostgreSQL's crash recovery empties UNLOGGED tables, so a restart between
-- the load and the merge leaves fewer (often none). Tables in p_uncounted are not counted here,
-- only their load must be recorded: their caller counts their rows with the statement that reads
-- them anyway (the merge's insert of a first load).
drop function if exists staging.transit_shortfall(text);

create or replace function staging.transit_shortfall(p_run_id text, p_uncounted text[] default '{}')
returns text
language plpgsql
stable
as $$
declare
    v_table    text;
    v_expected bigint;
    v_found    bigint;
    v_short    text[] := '{}';
begin
    foreach v_table in array staging.transit_tables() loop
        select rows_out into v_expected from audit.run_log
        where run_id = p_run_id and step = 'load' and source = 'public.' || v_table
          and status = 'success';
        if v_expected is null then
            return format('no load of public.%s is recorded for run %s: run notebook '
                          '04_load_postgres first', v_table, p_run_id);
        end if;
        if v_table = any(p_uncounted) then
            continue;
        end if;
        execute format('select count(*) from public.%I where run_id = $1', v_table)
            into v_found using p_run_id;
        if v_found <> v_expected then
            v_short := v_short || format('public.%s holds %s of the %s rows loaded from gold',
                                         v_table, v_found, v_expected);
        end if;
    end loop;
    return nullif(array_to_string(v_short, '; '), '');
end;
$$;
