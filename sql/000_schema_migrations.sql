-- Which sql/ files this database has applied, with their checksum: bootstrap applies a file only
-- when it is new or changed, so a run never alters tables (and never waits on another run's
-- locks) for nothing. Applied before every other file.
create schema if not exists audit;
create table if not exists audit.schema_migrations (
    file_name  text primary key,
    sha256     text not null,
    applied_at timestamptz not null default now()
);
