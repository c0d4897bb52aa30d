-- The fact's columns that a run's transit rows fill, in the fact's order: the fact's columns that
-- the keyed transit view (sql/035) also has, but the line key (the merge's key). With
-- p_lineage, the lineage columns (from which run and file, and which line of it, a line came:
-- written, never compared);
-- without, the delivered values (compared by a merge, and written). Nothing lists the fact's
-- columns by hand: a new fact column is loaded as soon as the fact and the transit table have it.
create or replace function staging.fact_transit_columns(p_lineage boolean)
returns text[]
language sql
stable
as $$
    select coalesce(array_agg(quote_ident(f.attname) order by f.attnum), '{}')
    from pg_attribute as f
    join pg_attribute as s
      on s.attrelid = 'public.bulk_fact_operaciones_ventas_keyed'::regclass
     and s.attname = f.attname and s.attnum > 0 and not s.attisdropped
    where f.attrelid = 'staging.fact_operaciones_ventas'::regclass
      and f.attnum > 0 and not f.attisdropped and f.attname <> 'line_key'
      and (f.attname in ('source_key', 'source_line')) = p_lineage
$$;
