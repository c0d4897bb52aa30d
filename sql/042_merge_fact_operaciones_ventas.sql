-- Lines of a run: insert new line keys, update lines whose values changed (a corrected line);
-- lineage columns alone are not a change. The columns are not listed here: they are the fact's
-- columns that the run's transit rows also have (staging.fact_transit_columns), so a new fact
-- column is merged as soon as both tables have it.
create or replace procedure staging.merge_fact_operaciones_ventas(
    p_run_id text, inout p_inserted bigint default null, inout p_updated bigint default null
)
language plpgsql
as $$
declare
    v_values  text[] := staging.fact_transit_columns(false);  -- compared, written when changed
    v_lineage text[] := staging.fact_transit_columns(true);   -- written, never compared
    v_affected bigint;
begin
    select count(distinct s.line_key) into p_inserted  -- the line keys new to staging
    from public.bulk_fact_operaciones_ventas as s
    where s.run_id = p_run_id
      and not exists (select 1 from staging.fact_operaciones_ventas f
                      where f.line_key = s.line_key);

    execute format(
        $merge$
        merge into staging.fact_operaciones_ventas as f
        using (select * from public.bulk_fact_operaciones_ventas_latest where run_id = $1) as s
        on f.line_key = s.line_key
        when matched and (%1$s) is distinct from (%2$s)
        then update set %3$s, %4$s, updated_at = now()
        when not matched then
            insert (line_key, %5$s, %6$s) values (s.line_key, %2$s, %7$s)
        $merge$,
        (select string_agg('f.' || c, ', ') from unnest(v_values) as c),
        (select string_agg('s.' || c, ', ') from unnest(v_values) as c),
        (select string_agg(c || ' = s.' || c, ', ') from unnest(v_values) as c),
        (select string_agg(c || ' = s.' || c, ', ') from unnest(v_lineage) as c),
        array_to_string(v_values, ', '),
        array_to_string(v_lineage, ', '),
        (select string_agg('s.' || c, ', ') from unnest(v_lineage) as c))
    using p_run_id;
    get diagnostics v_affected = row_count;
    p_updated := v_affected - p_inserted;
end;
$$;
