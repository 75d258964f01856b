-- Ledger, liveness, narrow readings, alerts (foundation).
create table if not exists devices (
    code            text primary key,
    alias           text unique,
    model           text not null,
    device_class    text not null,
    name            text not null default '',
    district        text not null,
    grid            text,
    lon             double precision,
    lat             double precision,
    crs             text not null default 'WGS84' check (crs in ('WGS84', 'GCJ02')),
    owner_unit      text,
    installer       text,
    contact         text,
    install_date    date,
    state           text not null default 'registered'
                    check (state in ('registered', 'active', 'suspended', 'decommissioned')),
    attributes      jsonb not null default '{}'::jsonb,
    secret_hash     text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    created_by      text not null default 'system',
    updated_by      text not null default 'system'
);
create index if not exists devices_district_class on devices (district, device_class);
create table if not exists device_state_history (
    code        text not null references devices(code),
    at          timestamptz not null default now(),
    from_state  text,
    to_state    text not null,
    reason      text not null default '',
    actor       text not null default 'system'
);
create index if not exists device_state_history_code on device_state_history (code, at);
create table if not exists device_liveness (
    code            text primary key,
    last_seen       timestamptz not null,
    last_event_time timestamptz not null
);
create table if not exists code_sequences (
    district    text not null,
    class_code  text not null,
    next_seq    integer not null,
    primary key (district, class_code)
);

-- Narrow table for metrics a model adds later than its class table.
create table if not exists readings_extra (
    device_code text not null,
    metric      text not null,
    ts          timestamptz not null,
    rx          timestamptz not null,
    value       double precision not null,
    unit        text not null,
    quality     smallint not null default 0,
    primary key (device_code, metric, ts)
);
create index if not exists readings_extra_ts on readings_extra using brin (ts);

create table if not exists alerts (
    id          text primary key,
    rule        text not null,
    device_code text not null,
    district    text not null,
    device_class text,
    severity    smallint not null,
    state       text not null check (state in ('open', 'acknowledged', 'resolved')),
    opened_at   timestamptz not null,
    cleared_at  timestamptz,
    metric      text,
    value       double precision,
    threshold   double precision,
    message     text not null default '',
    labels      jsonb not null default '{}'::jsonb,
    assignee    text,
    raised_at   timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index if not exists alerts_open on alerts (state, severity, district);
create index if not exists alerts_opened_at on alerts (opened_at desc);
create index if not exists alerts_device on alerts (device_code, rule) where state <> 'resolved';
create table if not exists alert_history (
    alert_id    text not null references alerts(id),
    at          timestamptz not null default now(),
    action      text not null,
    actor       text not null default 'system',
    comment     text not null default ''
);
create index if not exists alert_history_alert on alert_history (alert_id, at);
