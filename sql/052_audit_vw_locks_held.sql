-- Sessions that hold locks on the pipeline's tables (staging, audit, the transit tables) or its
-- advisory locks, with what they run: named in the message of a statement that hit
-- lock_timeout or statement_timeout (medallion.warehouse.lock_holders).
create or replace view audit.vw_locks_held as
select a.pid,
       a.usename as user_name,
       a.application_name,
       a.state,
       date_trunc('second', now() - coalesce(a.xact_start, a.backend_start)) as in_transaction_for,
       case when l.locktype = 'relation' then l.relation::regclass::text
            else l.locktype || ' lock' end as locked,
       l.mode,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), 200) as query
from pg_locks as l
join pg_stat_activity as a on a.pid = l.pid
where l.granted
  and a.pid <> pg_backend_pid()
  and a.datname = current_database()
  and (l.locktype = 'advisory'
       or l.relation in (select c.oid from pg_class as c
                         join pg_namespace as n on n.oid = c.relnamespace
                         where n.nspname in ('staging', 'audit')
                            or (n.nspname = 'public' and c.relname like 'bulk\_%')))
order by a.pid, locked;
