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
