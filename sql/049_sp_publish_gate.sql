-- The publish gate, inside the merge's transaction (staging.sp_merge_operaciones_ventas calls
-- it last): is what staging now holds for this run right?
-- * reconciliation: transit holds silver's lines and sum of sales of the run, and staging holds
--   every line key of the run with the delivered sales (lines and sum);
-- * keys: unique and not null natural keys of the run's members in the dimensions (the merge
--   wrote no other), no fact of the run without its customer and product (the unknown member
--   -1 counts as missing).
-- After a first load the merge passes what its insert read and wrote (p_staged: lines, sales,
-- staged_lines, staged_sales, orphans: the lines counted by the insert itself, their sales and
-- orphans read back from the fact), so the transit rows are not read again; after a merge they
-- are counted here, in one pass.
-- A failing check raises an error naming the check and by how much (SQLSTATE MDG01): the merge
-- rolls back with it. On success the checks are recorded in audit.run_log (step 'publish';
-- details -> 'checks': check, expected, found, passed, in this order); the
-- transit rows stay until the merge's transaction commits (staging.sp_clear_transit).
drop procedure if exists staging.sp_publish_gate(text);

create or replace procedure staging.sp_publish_gate(p_run_id text, p_staged jsonb default null)
language plpgsql
as $$
declare
    v_started   timestamptz := clock_timestamp();
    v_failures  text[] := '{}';
    v_checks    jsonb := '{}';
    v_silver    record;
    v_transit   record;
    v_delivered record;
    v_current_twins bigint;
    v_product_twins bigint;
    v_list      jsonb;
begin
    perform set_config('work_mem', '256MB', true);  -- hash joins over a large run in memory
    select coalesce(sum(rows_out), 0) as lines,
           coalesce(sum((details ->> 'sales_total')::numeric), 0) as sales
    into v_silver
    from audit.run_log where run_id = p_run_id and step = 'silver' and status = 'success';
    if p_staged is not null then
        -- a first load: its insert counted the transit rows it read (every one of the run
        -- with a line key) and wrote them all; their sales were read back from the fact
        -- (staging.insert_fact_...); reading the transit rows again took 1.3 s per 10M
        select (p_staged ->> 'lines')::bigint as lines, (p_staged ->> 'sales')::numeric as sales
        into v_transit;
        select (p_staged ->> 'lines')::bigint as lines, (p_staged ->> 'sales')::numeric as sales,
               (p_staged ->> 'staged_lines')::bigint as staged_lines,
               (p_staged ->> 'staged_sales')::numeric as staged_sales,
               (p_staged ->> 'orphans')::bigint as orphans
        into v_delivered;
    else
        select count(*) as lines, coalesce(sum(sales), 0) as sales
        into v_transit
        from public.bulk_fact_operaciones_ventas where run_id = p_run_id;
        -- One pass over the run's delivered lines (the latest transit row per line key, as the
        -- merge saw them): what was delivered, what staging holds, and facts without dimensions.
        select count(*) as lines, coalesce(sum(b.sales), 0) as sales,
               count(f.line_key) as staged_lines, coalesce(sum(f.sales), 0) as staged_sales,
               count(*) filter (where f.line_key is not null
                                  and (c.cliente_key is null or i.inventario_key is null
                                       or f.cliente_key = -1 or f.inventario_key = -1)) as orphans
        into v_delivered
        from (select line_key, sales
              from public.bulk_fact_operaciones_ventas as t
              where t.run_id = p_run_id and t.line_key is not null
                and not exists (select 1 from public.bulk_fact_operaciones_ventas as later
                                where later.run_id = t.run_id and later.line_key = t.line_key
                                  and later.bulk_seq > t.bulk_seq)) as b
        left join staging.fact_operaciones_ventas as f on f.line_key = b.line_key
        left join staging.dim_cliente as c on c.cliente_key = f.cliente_key
        left join staging.dim_inventario as i on i.inventario_key = f.inventario_key;
    end if;

    v_checks := jsonb_build_object(
        'silver_lines', v_silver.lines, 'silver_sales', v_silver.sales,
        'transit_lines', v_transit.lines, 'transit_sales', v_transit.sales,
        'delivered_line_keys', v_delivered.lines, 'staged_line_keys', v_delivered.staged_lines,
        'delivered_sales', v_delivered.sales, 'staged_sales', v_delivered.staged_sales,
        'orphan_facts', v_delivered.orphans);
    v_current_twins := staging.natural_key_twins('dim_cliente', 'customer_id', p_run_id,
                                                 p_current => true);
    v_product_twins := staging.natural_key_twins('dim_inventario', 'product_id', p_run_id);

    -- Every check, expected against found: a check passes when they are equal.
    v_list := jsonb_build_array(
        staging.gate_check('lines silver -> transit', v_silver.lines, v_transit.lines),
        staging.gate_check('sum of sales silver -> transit', v_silver.sales, v_transit.sales),
        staging.gate_check('line keys in staging', v_delivered.lines, v_delivered.staged_lines),
        staging.gate_check('sum of sales in staging', v_delivered.sales,
                           v_delivered.staged_sales),
        staging.gate_check('dim_cliente: customer ids with more than one current row', 0,
                           v_current_twins),
        staging.gate_check('dim_inventario: duplicated product ids', 0, v_product_twins),
        staging.gate_check('fact lines of the run without their customer or product', 0,
                           v_delivered.orphans));
    v_checks := v_checks || jsonb_build_object('checks', v_list);
    select coalesce(array_agg(format('%s: %s expected, %s found (%s)', c ->> 'check',
                                     c ->> 'expected', c ->> 'found',
                                     (c ->> 'found')::numeric - (c ->> 'expected')::numeric)
                              order by n), '{}')
    into v_failures
    from jsonb_array_elements(v_list) with ordinality as t(c, n)
    where not (c ->> 'passed')::boolean;

    if cardinality(v_failures) > 0 then
        raise exception 'publish gate failed for run %: %', p_run_id,
            array_to_string(v_failures, '; ')
            using errcode = 'MDG01',
                  hint = 'nothing was published; the run''s transit rows are kept in public.bulk_* '
                         'for inspection';
    end if;

    insert into audit.run_log as r (run_id, step, source, lines_in, rows_out, status, started_at,
                                    finished_at, details)
    values (p_run_id, 'publish', 'staging', v_delivered.lines, v_delivered.staged_lines, 'success',
            v_started, clock_timestamp(), v_checks)
    on conflict (run_id, step, source) do update set
        lines_in = excluded.lines_in, rows_out = excluded.rows_out, status = excluded.status,
        started_at = excluded.started_at, finished_at = excluded.finished_at,
        details = excluded.details;
end;
$$;
