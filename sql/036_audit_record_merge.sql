-- How a merge changed one table, in the run log: rows_out = rows inserted + updated;
-- details = inserted / updated / unchanged (rows of the run that were already as delivered).
drop procedure if exists audit.record_merge(text, text, bigint, bigint, timestamptz);

create or replace procedure audit.record_merge(
    p_run_id text, p_table text, p_inserted bigint, p_updated bigint, p_unchanged bigint,
    p_started timestamptz, p_strategy text
)
language sql
as $$
    insert into audit.run_log as r (run_id, step, source, lines_in, rows_out, status,
                                    started_at, finished_at, details)
    values (p_run_id, 'merge', p_table, p_inserted + p_updated + p_unchanged,
            p_inserted + p_updated, 'success', p_started, clock_timestamp(),
            jsonb_build_object('inserted', p_inserted, 'updated', p_updated,
                               'unchanged', p_unchanged, 'strategy', p_strategy))
    on conflict (run_id, step, source) do update set
        lines_in = excluded.lines_in, rows_out = excluded.rows_out, status = excluded.status,
        started_at = excluded.started_at, finished_at = excluded.finished_at,
        details = excluded.details;
$$;
