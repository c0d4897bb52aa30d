-- How many natural keys of a run's members appear on more than one row of a dimension (of its
-- current rows only with p_current: dim_cliente keeps closed versions): the publish gate's check
-- that the merge left each key once (sql/049). Only the run's members are looked at, as the
-- merge wrote no other (a run of 100 lines read all 500k customers: 0.08-0.3 s, measured); a
-- run that holds a tenth of the dimension or more (a first load) has the whole dimension
-- checked in one pass instead, without looking its keys up (10M lines: 0.3 s, not 0.66 s).
drop function if exists staging.natural_key_twins(text, text, text, text);  -- p_rows as text

create or replace function staging.natural_key_twins(
    p_dimension text, p_key text, p_run_id text, p_current boolean default false
)
returns bigint
language plpgsql
stable
as $$
declare
    v_whole boolean;
    v_twins bigint;
begin
    v_whole := (select greatest(reltuples, 0) from pg_class
                where oid = format('public.%I', 'bulk_' || p_dimension)::regclass) * 10
               >= (select greatest(reltuples, 0) from pg_class
                   where oid = format('staging.%I', p_dimension)::regclass);
    execute format(
        'select count(*) from (select %2$I from staging.%1$I where (%3$s)%4$s '
        'group by %2$I having count(*) > 1) as d',
        p_dimension, p_key, case when p_current then 'is_current' else 'true' end,
        case when v_whole then ''
             else format(' and %1$I in (select %1$I from public.%2$I where run_id = $1)',
                         p_key, 'bulk_' || p_dimension) end)
    into v_twins using p_run_id;
    return v_twins;
end;
$$;
