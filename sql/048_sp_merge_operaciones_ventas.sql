-- Merge one run's transit rows into the star schema: dimensions first, then the fact.
-- * one run at a time (advisory lock); everything in the caller's transaction: any error rolls
--   all of it back, with a message that says so;
-- * sources are the *_latest views: one row per key, so no target row is met twice;
-- * only rows whose values changed are updated (IS DISTINCT FROM): a re-run changes nothing;
-- * MERGE on PostgreSQL >= 15, INSERT ... ON CONFLICT before (or with p_strategy => 'upsert');
-- * dim_cliente as SCD type 1 (default) or 2 (p_scd_type => 2);
-- * inserted / updated / unchanged per table go to audit.run_log;
-- * a delivery of at least p_bulk_min_lines lines and a fifth of the fact (a first load, a
--   reload) is merged without the fact's foreign keys, their indexes and (with MERGE) its
--   primary key, which are built again, and validated in one pass, before the procedure ends
--   (staging.fact_secondary_structures).
-- The run's transit rows stay until staging.sp_publish_gate has checked the result.
drop procedure if exists staging.sp_merge_operaciones_ventas(text);
drop procedure if exists staging.sp_merge_operaciones_ventas(text, int, text);

create or replace procedure staging.sp_merge_operaciones_ventas(
    p_run_id text, p_scd_type int default 1, p_strategy text default null,
    p_bulk_min_lines bigint default 500000
)
language plpgsql
as $$
declare
    v_strategy text := coalesce(nullif(p_strategy, 'auto'),
        case when current_setting('server_version_num')::int >= 150000 then 'merge'
             else 'upsert' end);
    v_table    text;
    v_source   bigint;
    v_inserted bigint;
    v_updated  bigint;
    v_started  timestamptz;
    v_bulk     boolean;
begin
    if p_run_id is null or p_run_id = '' then
        raise exception 'sp_merge_operaciones_ventas: a run id is required';
    end if;
    if v_strategy not in ('merge', 'upsert') or coalesce(p_scd_type, 0) not in (1, 2) then
        raise exception 'sp_merge_operaciones_ventas: strategy must be merge, upsert or auto '
                        'and scd type 1 or 2 (got %, %)', p_strategy, p_scd_type;
    end if;
    perform pg_advisory_xact_lock(hashtext('staging.sp_merge_operaciones_ventas'));
    perform set_config('work_mem', '256MB', true);  -- hash joins of a large delivery in memory

    begin
        analyze public.bulk_dim_inventario, public.bulk_dim_cliente,
                public.bulk_fact_operaciones_ventas;
        foreach v_table in array array['dim_inventario', 'dim_cliente',
                                       'fact_operaciones_ventas'] loop
            v_started := clock_timestamp();
            if v_table = 'fact_operaciones_ventas' then  -- the view's key resolution is not needed
                select count(distinct line_key) into v_source
                from public.bulk_fact_operaciones_ventas where run_id = p_run_id;
            else
                execute format('select count(*) from public.%I where run_id = $1',
                               'bulk_' || v_table || '_latest')
                    into v_source using p_run_id;
            end if;
            v_bulk := v_table = 'fact_operaciones_ventas' and v_source >= p_bulk_min_lines
                      and v_source * 5 >= (select greatest(reltuples, 0) from pg_class
                                           where oid = 'staging.fact_operaciones_ventas'::regclass);
            if v_bulk then  -- ON CONFLICT (upsert) needs the primary key: MERGE does not
                call staging.fact_secondary_structures(false, v_strategy = 'merge');
            end if;
            if v_table = 'dim_cliente' and p_scd_type = 2 then
                call staging.scd2_dim_cliente(p_run_id, v_inserted, v_updated);
            elsif v_strategy = 'merge' then
                execute format('call staging.%I($1, null, null)', 'merge_' || v_table)
                    into v_inserted, v_updated using p_run_id;
            else
                execute format('call staging.%I($1, null, null)', 'upsert_' || v_table)
                    into v_inserted, v_updated using p_run_id;
            end if;
            if v_bulk then
                call staging.fact_secondary_structures(true);
            end if;
            call audit.record_merge(p_run_id, 'staging.' || v_table, v_inserted, v_updated,
                                    v_source - v_inserted - v_updated, v_started,
                                    case when v_table = 'dim_cliente' and p_scd_type = 2
                                         then 'scd2'
                                         when v_bulk then v_strategy || ' (bulk)'
                                         else v_strategy end);
        end loop;
    exception when others then
        raise exception 'sp_merge_operaciones_ventas(%) failed, nothing was merged: % (SQLSTATE %)',
            p_run_id, sqlerrm, sqlstate;
    end;
end;
$$;
