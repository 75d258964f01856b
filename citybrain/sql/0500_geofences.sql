-- Geofences (no PostGIS): geometry as GeoJSON, always WGS84, with its bounding
-- box in plain columns so candidate fences can be prefiltered with a B-tree.
-- Membership of mobile sensors, and a revision counter that lets every API
-- replica notice fence changes without polling the whole table.

create table if not exists geofences (
    id          text primary key check (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name        text not null check (length(name) between 1 and 200),
    kind        text not null default 'other'
                check (kind in ('school_zone', 'water_source_protection', 'flood_underpass', 'other')),
    -- GeoJSON Polygon or MultiPolygon in WGS84, validated (and repaired) by geo.fences.
    geometry    jsonb not null check (geometry->>'type' in ('Polygon', 'MultiPolygon')),
    -- The CRS the geometry was submitted in; the stored geometry is WGS84 either way.
    crs         text not null default 'WGS84' check (crs in ('WGS84', 'GCJ02')),
    min_lon     double precision not null,
    min_lat     double precision not null,
    max_lon     double precision not null,
    max_lat     double precision not null,
    created_at  timestamptz not null default now(),
    created_by  text not null default 'system',
    check (min_lon <= max_lon and min_lat <= max_lat)
);
create index if not exists geofences_bbox on geofences (min_lon, max_lon, min_lat, max_lat);
create index if not exists geofences_kind on geofences (kind);

-- Fences each mobile device was in at its last position (geo.service.GeoService.track_many).
create table if not exists device_fences (
    device_code text primary key,
    fences      text[] not null default '{}',
    updated_at  timestamptz not null default now()
);

-- One row, bumped by every statement that changes geofences.
create table if not exists geofences_revision (
    singleton   boolean primary key default true check (singleton),
    revision    bigint not null default 0
);
insert into geofences_revision (singleton, revision) values (true, 0) on conflict do nothing;

create or replace function geofences_bump_revision() returns trigger language plpgsql as $$
begin
    update geofences_revision set revision = revision + 1 where singleton;
    return null;
end;
$$;

drop trigger if exists geofences_revision_bump on geofences;
create trigger geofences_revision_bump
    after insert or update or delete or truncate on geofences
    for each statement execute function geofences_bump_revision();
