-- Anomaly detector state and device sessions (issue 6: anomaly detection, stale vs offline).

-- One row per device: its detectors' state per metric (alerts.anomaly.stream documents
-- the JSON), written in the same transaction as the alerts it produced, like rule_state.
-- `peers` is what the device contributes to its district peers' drift median:
-- {metric: [latest value, epoch s, learnt offset]}.
create table if not exists anomaly_state (
    device_code  text primary key,
    states       jsonb not null default '{}'::jsonb,
    peers        jsonb not null default '{}'::jsonb,
    updated_at   timestamptz not null default now()
);

-- The device's transport session as its status messages tell it: the birth message
-- {"state":"online"} and the last will {"state":"offline"} on citybrain/up/{code}/status.
-- `status_at` is the receive time of the newest status message; an older one never
-- overwrites a newer one (greatest wins), so a replayed batch changes nothing.
create table if not exists device_sessions (
    code        text primary key,
    connected   boolean not null,
    status_at   timestamptz not null,
    updated_at  timestamptz not null default now()
);

