-- Transactional outbox for alert transitions: written in the same transaction as
-- the alerts and rule state, published to Kafka afterwards and deleted once Kafka
-- acknowledged them. A worker killed between the commit and the publish leaves the
-- rows here for the next drain, so no alert transition is lost on the topic.
create table if not exists alert_outbox (
    seq         bigserial primary key,
    key         text not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now()
);
