-- How a merge changed one table, in the run log: rows_out = rows affected,
-- details = inserted / updated.
create or replace procedure audit.record_merge(
    p_run_id text, p_table text, p_affected bigint, p_inserted bigint, p_started timestamptz
)
language sql
as $$
    insert into audit.run_log as r (run_id, step, source, rows_out, status, started_at,
                                    finished_at, details)
    values (p_run_id, 'merge', p_table, p_affected, 'success', p_started, clock_timestamp(),
            jsonb_build_object('inserted', p_inserted, 'updated', p_affected - p_inserted))
    on conflict (run_id, step, source) do update set
        rows_out = excluded.rows_out, status = excluded.status,
        started_at = excluded.started_at, finished_at = excluded.finished_at,
        details = excluded.details;
$$;
