-- What each step cost: wall time and the peak memory (RSS) of the process that ran it (the
-- notebook's kernel). Read by `make bench`; one row per run and step, replaced on a retry.
create table if not exists audit.step_metrics (
    run_id       text        not null,
    step         text        not null,
    wall_seconds numeric     not null,
    peak_rss_mb  numeric     not null,
    recorded_at  timestamptz not null default now(),
    primary key (run_id, step)
);

-- Bronze and silver run once per delivered file: one row per run, step and file ('' for a
-- step over the whole run).
alter table audit.step_metrics add column if not exists source text not null default '';
do $$
begin
    if (select array_length(conkey, 1) from pg_constraint
        where conname = 'step_metrics_pkey' and conrelid = 'audit.step_metrics'::regclass) = 2 then
        alter table audit.step_metrics drop constraint step_metrics_pkey,
            add primary key (run_id, step, source);
    end if;
end $$;
