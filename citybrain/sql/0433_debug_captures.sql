-- Which devices the stream workers capture into the debug ring (streams.debug.Capture):
-- on demand, a row per device whose debug view was opened or that was registered
-- through the API. A handful of rows; the workers read the current ones every 2 s.
create table if not exists debug_captures (
    code        text primary key,
    until       timestamptz not null,
    started_by  text not null default ''
);
create index if not exists debug_captures_until on debug_captures (until);
