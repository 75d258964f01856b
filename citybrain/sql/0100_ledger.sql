-- Device ledger (issue 3): serial numbers, Mosquitto hashes, search indexes.

-- Manufacturer serial / IMEI: the stable key that makes a bulk import of rows
-- without a code idempotent (a re-run finds the device it allocated before).
alter table devices add column if not exists serial text;
create unique index if not exists devices_serial on devices (serial) where serial is not null;

-- Credentials: secret_hash (0001) holds the scrypt hash the embedded broker
-- checks; mosquitto_hash holds the same secret as Mosquitto's $7$ PBKDF2-SHA512
-- hash, from which `citybrain devices mosquitto-files` renders a password file.
alter table devices add column if not exists mosquitto_hash text;
alter table devices add column if not exists secret_rotated_at timestamptz;

-- List filters and the broker's incremental credential refresh.
create index if not exists devices_state on devices (state);
create index if not exists devices_class on devices (device_class);
create index if not exists devices_updated_at on devices (updated_at);
-- bbox filter: point(lon, lat) <@ box(...) uses this GiST index (no PostGIS needed).
create index if not exists devices_lonlat on devices using gist (point(lon, lat))
    where lon is not null and lat is not null;
