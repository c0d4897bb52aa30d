-- One row per run, step and source (file or table): what came in, what went out, what was
-- quarantined. Keyed so that a retried step replaces its row instead of adding a second one.
create table if not exists audit.run_log (
    run_id           text        not null,
    step             text        not null,
    source           text        not null,
    lines_in         bigint,
    rows_out         bigint,
    rows_quarantined bigint,
    status           text        not null,
    started_at       timestamptz not null default now(),
    finished_at      timestamptz,
    details          jsonb       not null default '{}'::jsonb,
    primary key (run_id, step, source)
);

-- Added with the data contract: exact duplicate lines dropped (lines_in = rows_out +
-- rows_quarantined + rows_duplicate for every file).
alter table audit.run_log add column if not exists rows_duplicate bigint;
