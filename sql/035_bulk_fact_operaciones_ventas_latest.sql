-- One transit row per run and line key (the latest load wins: a later delivery corrects an
-- earlier line), surrogate keys resolved: what a merge reads, so that no target row is met twice.
-- Made again each time, after the view it reads (035_..._keyed, applied just before).
drop view if exists public.bulk_fact_operaciones_ventas_latest;
create view public.bulk_fact_operaciones_ventas_latest as
select k.*
from public.bulk_fact_operaciones_ventas_keyed as k
-- the latest row per (run, line key): an anti-join on narrow keys, not a sort of whole rows
where not exists (select 1 from public.bulk_fact_operaciones_ventas as later
                  where later.run_id = k.run_id and later.line_key = k.line_key
                    and later.bulk_seq > k.bulk_seq);
