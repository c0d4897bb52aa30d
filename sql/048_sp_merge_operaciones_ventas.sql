-- Publish one run: merge its transit rows into the star schema (dimensions first, then the
-- fact) and run the publish gate on the result, in one transaction.
-- * one run at a time (advisory lock); everything in the caller's transaction: any error, a
--   failed gate check included, rolls all of it back, with a message that says so: nothing the
--   gate rejects is ever visible in staging;
-- * a run already published is left alone (a retry after the commit changes nothing);
-- * the run's transit rows must be complete: as many per table as notebook 04 loaded from gold
--   (audit.run_log, step 'load'). Crash recovery empties UNLOGGED tables; a merge of what is
--   left would publish a partial run, so it fails (SQLSTATE MDT01, everything rolled back)
--   and the DAG's merge task reloads the rows from gold before it calls the merge again. The
--   fact's rows are counted by the insert of a first load, which reads them all anyway (a
--   second count took 1.1 s for 10M lines), else before the merge (staging.check_transit);
--   the dimensions' before anything;
-- * a run whose line keys are all new to the fact (a first load, a delivery of new sales)
--   inserts its lines without comparing them, and what it wrote goes to the gate (the
--   insert's own count; the sum of sales and the orphans read back from the fact right after:
--   staging.insert_fact_operaciones_ventas); otherwise sources are the *_latest views: one
--   row per key, so no target row is met twice. Whether they are new is looked up for the
--   run's first p_key_probe lines (all of a delivery that size or smaller); a key further on
--   that is in the fact already is refused by the fact's primary key (in place, or built
--   right after the insert), and the run is merged instead: looking up each of 10M lines
--   took 6.7 s, a tenth of the merge (issue 12);
-- * a dimension that holds only its unknown member (a first load) takes the run's members
--   without comparing them either, and counts them with the merge itself (merge_dim_*);
-- * only rows whose values changed are updated (IS DISTINCT FROM): a re-run changes nothing;
-- * dim_cliente as SCD type 1 (default) or 2 (p_scd_type => 2);
-- * inserted / updated / unchanged per table go to audit.run_log, and the fact's line count
--   (audit.fact_line_count) grows by the lines inserted;
-- * a delivery of at least p_bulk_min_lines lines and a fifth of the fact (a reload, a
--   large delivery onto a small fact) is merged without the fact's primary key, foreign keys
--   and their indexes, which are built again before the procedure ends, the foreign keys
--   without reading the fact (staging.fact_secondary_structures: why that leaves nothing
--   unchecked); the same for a large insert of new lines.
-- MERGE needs PostgreSQL 15 or newer (medallion.warehouse.apply_sql refuses older servers).
-- The run's transit rows stay until the commit: staging.sp_clear_transit removes them after it.
drop procedure if exists staging.sp_merge_operaciones_ventas(text);
drop procedure if exists staging.sp_merge_operaciones_ventas(text, int, text);
drop procedure if exists staging.sp_merge_operaciones_ventas(text, int, text, bigint);
drop procedure if exists staging.sp_merge_operaciones_ventas(text, int, bigint);
-- the INSERT ... ON CONFLICT twins of the MERGE procedures, for PostgreSQL < 15 (gone)
drop procedure if exists staging.upsert_dim_inventario(text, bigint, bigint);
drop procedure if exists staging.upsert_dim_cliente(text, bigint, bigint);
drop procedure if exists staging.upsert_fact_operaciones_ventas(text, bigint, bigint);

create or replace procedure staging.sp_merge_operaciones_ventas(
    p_run_id text, p_scd_type int default 1, p_bulk_min_lines bigint default 500000,
    p_key_probe bigint default 100000
)
language plpgsql
as $$
declare
    v_table    text;
    v_source   bigint;
    v_inserted bigint;
    v_updated  bigint;
    v_started  timestamptz;
    v_bulk     boolean;
    v_empty    boolean;
    v_how      text;
    v_sales    numeric;
    v_orphans  bigint;
    v_staged   jsonb;  -- what a first load's insert wrote, for the gate (null after a merge)
    v_loaded   bigint;  -- the fact's transit rows the load wrote
    v_lock_timeout text;
begin
    if p_run_id is null or p_run_id = '' then
        raise exception 'sp_merge_operaciones_ventas: a run id is required';
    end if;
    if coalesce(p_scd_type, 0) not in (1, 2) then
        raise exception 'sp_merge_operaciones_ventas: scd type must be 1 or 2 (got %)',
                        p_scd_type;
    end if;
    -- waiting for another run's merge is expected (a large one takes minutes): longer than
    -- the session's lock_timeout, which then applies again to everything else
    v_lock_timeout := current_setting('lock_timeout');
    perform set_config('lock_timeout', '30min', true);
    perform pg_advisory_xact_lock(hashtext('staging.sp_merge_operaciones_ventas'));
    perform set_config('lock_timeout', v_lock_timeout, true);
    perform set_config('work_mem', '256MB', true);  -- hash joins of a large delivery in memory
    -- this transaction's writes to the fact are counted here (audit.fact_line_count), not
    -- forgotten by its guard (sql/054)
    perform set_config('medallion.merging', 'on', true);
    if staging.run_published(p_run_id) then
        raise notice 'run % is already published: nothing to merge', p_run_id;
        return;
    end if;
    -- the fact's transit rows are counted by what reads them: the insert of new lines (its
    -- count must be the load's), else a count before the merge
    call staging.check_transit(p_run_id, array['bulk_fact_operaciones_ventas']);

    begin
        -- statistics of the run's transit rows for the merges' plans. Of the fact's lines,
        -- before they are inserted, only how many the run has (run_id): without them the
        -- planner took the run for one line and hashed it instead of the dimensions (10M
        -- lines onto 500k customers: the insert's read 11-12 s -> 3.5-3.8 s; analyze 0.17 s).
        -- All of them when merged.
        foreach v_table in array staging.transit_tables() loop
            if v_table = 'bulk_fact_operaciones_ventas' then
                analyze public.bulk_fact_operaciones_ventas (run_id);
            else
                execute format('analyze public.%I', v_table);
            end if;
        end loop;
        foreach v_table in array array['dim_inventario', 'dim_cliente',
                                       'fact_operaciones_ventas'] loop
            v_started := clock_timestamp();
            v_how := 'merge';
            v_source := null;
            v_empty := v_table = 'fact_operaciones_ventas'
                       and not exists (select 1 from staging.fact_operaciones_ventas);
            if v_table = 'fact_operaciones_ventas'
               and (v_empty
                    or not exists (select 1
                                   from (select line_key from public.bulk_fact_operaciones_ventas
                                         where run_id = p_run_id limit p_key_probe) as b
                                   join staging.fact_operaciones_ventas as f using (line_key)))
            then
                -- New lines only (a first load, a delivery of new sales): inserted as
                -- delivered, nothing compared; a large delivery builds the keys once after.
                -- The run's line count is the load's (the insert checks it has them all).
                select rows_out, rows_out >= p_bulk_min_lines
                       and rows_out * 5 >= (select greatest(reltuples, 0) from pg_class
                                            where oid = 'staging.fact_operaciones_ventas'::regclass)
                into v_loaded, v_bulk
                from audit.run_log
                where run_id = p_run_id and step = 'load' and status = 'success'
                  and source = 'public.bulk_fact_operaciones_ventas';
                v_bulk := v_bulk or v_empty;
                begin
                    if v_bulk then
                        call staging.fact_secondary_structures(false, true);
                    end if;
                    if v_empty then
                        -- empty already; emptied in this transaction, it is written without
                        -- WAL on a server with wal_level = minimal (the embedded one)
                        truncate staging.fact_operaciones_ventas;
                    end if;
                    call staging.insert_fact_operaciones_ventas(p_run_id, v_inserted, v_sales,
                                                                v_orphans);
                    if v_inserted <> v_loaded then
                        -- fewer transit rows than the load wrote: stopped here (MDT01). Rows
                        -- without a line key would not be inserted either: the gate says so.
                        call staging.check_transit(p_run_id);
                    end if;
                    if v_bulk then
                        call staging.fact_secondary_structures(true, p_validate => false);
                        -- statistics of the filled fact's columns that what reads it next
                        -- filters, joins and groups on (the gate, notebook 05); autovacuum
                        -- takes the others' later (all columns: 0.25-0.31 s per 1M lines,
                        -- these: 0.09 s)
                        analyze staging.fact_operaciones_ventas (source_key, cliente_key,
                                                                 inventario_key, order_date,
                                                                 region);
                    end if;
                    v_updated := 0;
                    v_source := v_inserted;
                    v_how := case when v_bulk then 'insert (bulk)' else 'insert' end;
                    v_staged := jsonb_build_object(
                        'lines', v_inserted, 'sales', v_sales, 'staged_lines', v_inserted,
                        'staged_sales', v_sales, 'orphans', v_orphans);
                exception when unique_violation then
                    -- the run delivers a line key more than once, or one beyond the first
                    -- p_key_probe lines is in the fact already: the merge below keeps the
                    -- latest (everything of the attempt was rolled back with this block)
                    v_how := 'merge';
                end;
            end if;
            if v_how = 'merge' then
                if v_table = 'fact_operaciones_ventas' then  -- the view's key resolution is not needed
                    -- the fact's rows only: the dimensions' were counted before anything
                    call staging.check_transit(
                        p_run_id, array_remove(staging.transit_tables(),
                                               'bulk_fact_operaciones_ventas'));
                    analyze public.bulk_fact_operaciones_ventas;
                    select count(distinct line_key) into v_source
                    from public.bulk_fact_operaciones_ventas where run_id = p_run_id;
                end if;
                v_bulk := v_table = 'fact_operaciones_ventas' and v_source >= p_bulk_min_lines
                          and v_source * 5 >= (select greatest(reltuples, 0) from pg_class
                                               where oid = 'staging.fact_operaciones_ventas'::regclass);
                if v_bulk then
                    call staging.fact_secondary_structures(false, true);
                    v_how := 'merge (bulk)';
                end if;
                if v_table = 'dim_cliente' and p_scd_type = 2 then
                    call staging.scd2_dim_cliente(p_run_id, v_inserted, v_updated);
                    v_how := 'scd2';
                elsif v_table = 'fact_operaciones_ventas' then
                    call staging.merge_fact_operaciones_ventas(p_run_id, v_inserted, v_updated);
                else  -- a dimension's merge counts the run's rows itself on a first load
                    execute format('call staging.%I($1, null, null, null)', 'merge_' || v_table)
                        into v_inserted, v_updated, v_source using p_run_id;
                end if;
                if v_source is null then  -- the run's rows, one per key
                    execute format('select count(*) from public.%I where run_id = $1',
                                   'bulk_' || v_table || '_latest')
                        into v_source using p_run_id;
                end if;
                if v_bulk then
                    call staging.fact_secondary_structures(true, p_validate => false);
                end if;
            end if;
            if v_table <> 'fact_operaciones_ventas'
               and (v_inserted + v_updated) * 10
                   >= (select greatest(reltuples, 0) from pg_class
                       where oid = ('staging.' || v_table)::regclass) then
                -- statistics of a dimension the run filled or changed by a tenth, for the
                -- fact's joins to it next: without them (a first load) the planner took each
                -- customer for many and sorted the run's lines on disk for a merge join (1M
                -- lines into a new database: the fact's part of the merge 4.7-5.9 s -> 3.4 s;
                -- the analyze about 0.05 s)
                execute format('analyze staging.%I', v_table);
            end if;
            call audit.record_merge(p_run_id, 'staging.' || v_table, v_inserted, v_updated,
                                    v_source - v_inserted - v_updated, v_started, v_how);
            if v_table = 'fact_operaciones_ventas' then  -- the fact's lines: those it had + new
                if v_empty then
                    insert into audit.fact_line_count (lines) values (v_inserted)
                    on conflict (only_row) do update set lines = excluded.lines,
                                                         counted_at = now();
                else  -- none kept (forgotten): the next reader counts them
                    update audit.fact_line_count
                    set lines = lines + v_inserted, counted_at = now();
                end if;
            end if;
        end loop;
        call staging.sp_publish_gate(p_run_id, v_staged);
    exception when others then
        raise exception 'sp_merge_operaciones_ventas(%) failed, nothing was merged: % (SQLSTATE %)',
            p_run_id, sqlerrm, sqlstate using errcode = sqlstate;
    end;
end;
$$;
