-- Stop the merge of a run whose transit rows are not all there (staging.transit_shortfall; tables
-- in p_uncounted: their load recorded, their rows counted by the caller), with SQLSTATE MDT01:
-- the DAG's merge task reloads them from gold and calls the merge again. Raised inside the merge,
-- it rolls back everything the merge did.
create or replace procedure staging.check_transit(p_run_id text, p_uncounted text[] default '{}')
language plpgsql
as $$
declare
    v_missing text := staging.transit_shortfall(p_run_id, p_uncounted);
begin
    if v_missing is not null then
        raise exception 'sp_merge_operaciones_ventas(%): the run''s transit rows are incomplete, '
                        'nothing was merged: %', p_run_id, v_missing
            using errcode = 'MDT01',
                  hint = 'reload them from gold (notebook 04_load_postgres); PostgreSQL empties '
                         'UNLOGGED tables when it recovers from a crash';
    end if;
end;
$$;
