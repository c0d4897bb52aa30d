-- The delivery ledger: every file the DAG has seen, by name and content. A file whose exact
-- content was loaded once is skipped ever after (under any name); a changed file under a known
-- name is a new row and is loaded; a file that failed, or whose run never finished
-- ('processing'), is taken again by the next run.
create table if not exists audit.deliveries (
    file_name     text        not null,  -- name in the input folder
    sha256        text        not null,  -- of the delivered bytes
    size_bytes    bigint      not null,
    first_seen_at timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    run_id        text        not null,  -- the run that loaded it, or the last that tried
    status        text        not null
        check (status in ('processing', 'loaded', 'failed', 'duplicate')),
    message       text,                  -- why it failed, or which file it duplicates
    updated_at    timestamptz not null default now(),
    primary key (file_name, sha256)
);

-- "Was this content loaded?" is asked for every file of every run.
create index if not exists deliveries_sha256 on audit.deliveries (sha256) where status = 'loaded';
