-- The transit tables (sql/020-022), dimensions first: the one list in SQL of the tables a run's
-- transit rows are in. The procedures that check (staging.transit_shortfall), merge and clear
-- (staging.sp_clear_transit) a run's rows go through it; medallion.settings.TRANSIT_TABLES is
-- the same list on the Python side (the load, the merge task's VACUUM), and a test keeps the two
-- equal.
create or replace function staging.transit_tables()
returns text[]
language sql
immutable
as $$
    select array['bulk_dim_inventario', 'bulk_dim_cliente', 'bulk_fact_operaciones_ventas'];
$$;
