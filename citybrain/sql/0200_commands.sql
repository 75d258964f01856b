-- Downlink commands (issue #4): one row per command, with its lifecycle.
--   queued ─▶ sent ─▶ acked | failed          (device answered, or did not within timeout_s)
--   queued ─▶ expired                          (device stayed offline for ttl_s)
-- history is an append-only JSON array of {"at", "state", "detail"}.
create table if not exists commands (
    id          uuid primary key,
    device_code text not null references devices(code),
    name        text not null,
    params      jsonb not null default '{}'::jsonb,
    transport   text not null default 'mqtt' check (transport in ('mqtt', 'hj212')),
    state       text not null default 'queued'
                check (state in ('queued', 'sent', 'acked', 'failed', 'expired')),
    created_at  timestamptz not null default now(),
    sent_at     timestamptz,
    acked_at    timestamptz,
    ttl_s       integer not null check (ttl_s > 0),
    timeout_s   integer not null check (timeout_s > 0),
    result      jsonb,
    history     jsonb not null default '[]'::jsonb,
    created_by  text not null default 'api'
);
create index if not exists commands_device on commands (device_code, created_at desc);
-- The dispatcher scans only open commands.
create index if not exists commands_open on commands (state, created_at) where state in ('queued', 'sent');
