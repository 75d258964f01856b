-- anomaly_state.states is a device's detector states, about 3.5 KB of JSON for an air station
-- (robust_z's window and the packed states are base64), rewritten whole for nearly every device
-- of every batch. Past about 2 KB a row is compressed, and PostgreSQL's own compressor (pglz)
-- on that text was the largest part of PostgreSQL's CPU per state write (docs/benchmarks.md,
-- "Stream worker"). Where the server has lz4 (PostgreSQL 14 and later built with it, as
-- Debian's and the TimescaleDB images are), the column is compressed with lz4: the same size
-- at a fraction of the CPU. Where it has not (the embedded server), the row is kept inline and
-- uncompressed up to a page (toast_tuple_target): about 40% more table for half the CPU.
do $$
begin
    if exists (
        select 1 from pg_settings where name = 'default_toast_compression' and 'lz4' = any(enumvals)
    ) then
        alter table anomaly_state alter column states set compression lz4;
    else
        alter table anomaly_state set (toast_tuple_target = 8160);
    end if;
end
$$;
