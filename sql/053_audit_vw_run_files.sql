-- Each file of a run: what the run decided for it (audit.run_log, step 'discover': new,
-- changed, retry, reprocess, already loaded, duplicate, ignored) and, for a file it cleaned, its lines
-- read, to silver, quarantined and dropped as exact duplicates (step 'silver'; a notebook run
-- by hand has no 'discover' step). For the run's result notebook and its record in outputs/.
drop view if exists audit.vw_run_files;  -- nothing depends on it; its columns may change
create view audit.vw_run_files as
select coalesce(d.run_id, s.run_id)                 as run_id,
       coalesce(d.source, s.details ->> 'file')     as file_name,
       d.status                                     as decision,
       s.lines_in,
       s.rows_out                                   as silver,
       s.rows_quarantined                           as quarantined,
       s.rows_duplicate                             as duplicates,
       s.status                                     as silver_status,
       coalesce(s.details ->> 'error', d.details ->> 'note') as note
from (select * from audit.run_log where step = 'discover') as d
full join (select * from audit.run_log where step = 'silver') as s
  on s.run_id = d.run_id and s.details ->> 'file' = d.source;
