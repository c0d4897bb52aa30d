-- How many lines the fact holds, kept by the merge (staging.sp_merge_operaciones_ventas adds
-- the lines it inserted, in its own transaction), so that a run's result does not count every
-- line of the warehouse again (10M lines: 0.25-0.6 s per run, growing with the warehouse).
-- Lines inserted or deleted by anything else make it forgotten (sql/054), and the next reader
-- counts the lines once more and keeps that (audit.fact_lines, sql/055): the number shown is
-- always exact.
create table if not exists audit.fact_line_count (
    only_row   boolean     primary key default true check (only_row),
    lines      bigint      not null check (lines >= 0),
    counted_at timestamptz not null default now()  -- counted, or last changed by a merge
);
