-- Debounced geofence tracking of mobile devices (geo.tracking): per device, the
-- confirmed fences with their entry times, the changes being confirmed and the
-- event time of the last position applied (replays are ignored), as the JSON
-- of geo.tracking.TrackState. device_fences.fences stays the confirmed ids.
alter table device_fences add column if not exists state jsonb not null default '{}';
