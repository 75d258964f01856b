-- Rule engine state, maintenance windows, district incidents, alert lifecycle fields.

-- One row per device: its rule states, latest values and the event time up to
-- which it was evaluated (a replayed batch older than the watermark is skipped).
create table if not exists rule_state (
    device_code   text primary key,
    watermark_us  bigint not null default 0,
    snapshot      jsonb not null default '{}'::jsonb,
    states        jsonb not null default '{}'::jsonb,
    updated_at    timestamptz not null default now()
);

create table if not exists maintenance_windows (
    id            bigserial primary key,
    district      text,
    device_code   text,
    device_class  text,
    starts_at     timestamptz not null,
    ends_at       timestamptz not null,
    reason        text not null default '',
    created_by    text not null default 'system',
    created_at    timestamptz not null default now(),
    check (ends_at > starts_at)
);
create index if not exists maintenance_windows_active on maintenance_windows (ends_at);

create table if not exists incidents (
    id            text primary key,
    rule          text not null,
    district      text not null,
    state         text not null default 'open' check (state in ('open', 'acknowledged', 'resolved')),
    severity      smallint not null,
    opened_at     timestamptz not null,
    resolved_at   timestamptz,
    device_count  integer not null default 0,
    updated_at    timestamptz not null default now()
);
create unique index if not exists incidents_one_open on incidents (district, rule) where state <> 'resolved';

alter table alerts add column if not exists flapping boolean not null default false;
alter table alerts add column if not exists incident_id text;
alter table alerts add column if not exists reopened integer not null default 0;
create index if not exists alerts_incident on alerts (incident_id) where incident_id is not null;
create index if not exists alerts_rule_district_open on alerts (rule, district) where state <> 'resolved';
