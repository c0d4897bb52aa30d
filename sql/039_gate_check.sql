-- One check of the publish gate (sql/049), as recorded in audit.run_log: its name, the
-- expected and the found value, and whether they are equal.
create or replace function staging.gate_check(p_check text, p_expected numeric, p_found numeric)
returns jsonb
language sql immutable
as $$
    select jsonb_build_object('check', p_check, 'expected', p_expected, 'found', p_found,
                              'passed', p_expected = p_found);
$$;
