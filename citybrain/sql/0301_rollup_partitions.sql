-- Rollup tables partitioned like the raw tables (streams/rollup.py, docs/store.md).
--
-- Plain rollup tables created before this migration become natively
-- partitioned on bucket: by UTC month for 5 min and 1 h, by UTC year for
-- 1 day, partitions named rollup_{class}_{res}_YYYYMM / _YYYY, so retention
-- drops old months whole instead of deleting rows. Tables created after it
-- are partitioned from the start (citybrain.migrations.ensure_class_tables).
-- TimescaleDB continuous aggregates (relkind 'v') are left alone.
--
-- Each table is rebuilt: renamed aside, a partitioned table of the same
-- columns created under its name, partitions created for the months (years)
-- its rows cover, rows copied, the old table dropped. It runs in the
-- migration's transaction, so a failure leaves the old tables as they were.
do $$
declare
    t record;
    res text;
    span interval;
    fmt text;
    old_name text;
    lo timestamp;
    hi timestamp;
    p timestamp;
begin
    for t in
        select c.relname
        from pg_class c
        where c.relkind = 'r'
          and c.relnamespace = current_schema()::regnamespace
          and c.relname ~ '^rollup_[a-z][a-z0-9_]*_(5m|1h|1d)$'
        order by c.relname
    loop
        res := substring(t.relname from '_(5m|1h|1d)$');
        if res = '1d' then
            span := interval '1 year';
            fmt := 'YYYY';
        else
            span := interval '1 month';
            fmt := 'YYYYMM';
        end if;
        old_name := t.relname || '_unpartitioned';
        execute format('alter table %I rename to %I', t.relname, old_name);
        execute format(
            'create table %I (like %I including defaults including constraints) partition by range (bucket)',
            t.relname, old_name);
        -- Bounds in UTC wall-clock time (timestamp without zone), so that adding a
        -- month does not depend on the session's TimeZone.
        execute format(
            'select date_trunc(%L, min(bucket) at time zone ''UTC''), date_trunc(%L, max(bucket) at time zone ''UTC'') from %I',
            case when res = '1d' then 'year' else 'month' end,
            case when res = '1d' then 'year' else 'month' end,
            old_name)
            into lo, hi;
        if lo is not null then
            p := lo;
            while p <= hi loop
                execute format(
                    'create table %I partition of %I for values from (%L) to (%L)',
                    t.relname || '_' || to_char(p, fmt), t.relname,
                    (p at time zone 'UTC'), ((p + span) at time zone 'UTC'));
                p := p + span;
            end loop;
            execute format('insert into %I select * from %I', t.relname, old_name);
        end if;
        execute format('drop table %I', old_name);
        -- The old table's key and index names are free again.
        execute format('alter table %I add primary key (device_code, bucket)', t.relname);
        execute format('create index %I on %I (bucket)', t.relname || '_bucket', t.relname);
    end loop;
end
$$;
