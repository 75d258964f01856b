-- Ledger change feed (issue 17): the stream workers keep their device index up
-- to date by reading only what changed since their last refresh, instead of
-- reloading the whole ledger every few seconds.
--
-- change_seq: a number from one sequence, given to a device when it is
-- inserted and again whenever a column of the in-memory index changes (model,
-- class, district, grid, state, attributes). Credential rotation, liveness and
-- descriptive edits do not move it. A deleted device leaves a tombstone with
-- its own number.
--
-- Sequence numbers are taken at write time but become visible at commit, so a
-- reader could see 101 committed while 100 is still in flight. Every statement
-- that writes devices therefore first takes a SHARED transaction-level advisory
-- lock (key 1701017017); a reader that gets the EXCLUSIVE lock with a try (never
-- waiting, so no writer is ever blocked) knows that every number up to the
-- sequence's last value is settled (devices.ledger.IndexFeed).
create sequence if not exists device_change_seq;
alter table devices add column if not exists change_seq bigint not null default nextval('device_change_seq');
create index if not exists devices_change_seq on devices (change_seq);

create table if not exists device_tombstones (
    code        text primary key,
    change_seq  bigint not null
);
create index if not exists device_tombstones_change_seq on device_tombstones (change_seq);

create or replace function devices_change_lock() returns trigger language plpgsql as $$
begin
    perform pg_advisory_xact_lock_shared(1701017017);
    return null;
end $$;
drop trigger if exists devices_change_lock on devices;
create trigger devices_change_lock before insert or update or delete on devices
    for each statement execute function devices_change_lock();

create or replace function devices_bump_change_seq() returns trigger language plpgsql as $$
begin
    new.change_seq := nextval('device_change_seq');
    return new;
end $$;
drop trigger if exists devices_change_seq on devices;
create trigger devices_change_seq before update of model, device_class, district, grid, state, attributes on devices
    for each row
    when ((old.model, old.device_class, old.district, old.grid, old.state, old.attributes)
          is distinct from (new.model, new.device_class, new.district, new.grid, new.state, new.attributes))
    execute function devices_bump_change_seq();

create or replace function devices_tombstone() returns trigger language plpgsql as $$
begin
    insert into device_tombstones (code, change_seq) values (old.code, nextval('device_change_seq'))
        on conflict (code) do update set change_seq = excluded.change_seq;
    return null;
end $$;
drop trigger if exists devices_tombstone on devices;
create trigger devices_tombstone after delete on devices
    for each row execute function devices_tombstone();
