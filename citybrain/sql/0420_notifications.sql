-- Notification subscriptions (outbound webhooks per rule pattern, severity and
-- districts) and their deliveries. A delivery is unique per (subscription, alert,
-- transition, severity): the alerts topic is read at least once, so a replayed
-- transition must enqueue nothing twice. Every attempt is kept for the console.
create table if not exists notification_subscriptions (
    id            bigserial primary key,
    name          text not null,
    url           text not null,
    rule_pattern  text not null default '*',
    min_severity  smallint not null default 2,
    districts     text[] not null default '{}',
    format        text not null default 'json',
    template      text not null default '',
    secret        text not null default '',
    enabled       boolean not null default true,
    created_by    text not null default '',
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

create table if not exists notification_deliveries (
    id              bigserial primary key,
    subscription_id bigint not null references notification_subscriptions (id) on delete cascade,
    alert_id        text not null,
    transition      text not null,
    severity        text not null,
    alert           jsonb not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts        integer not null default 0,
    last_error      text,
    next_at         timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    unique (subscription_id, alert_id, transition, severity)
);
create index if not exists notification_deliveries_due on notification_deliveries (next_at) where status = 'pending';

create table if not exists notification_attempts (
    delivery_id  bigint not null references notification_deliveries (id) on delete cascade,
    attempt      integer not null,
    at           timestamptz not null default now(),
    http_status  integer,
    error        text,
    primary key (delivery_id, attempt)
);
