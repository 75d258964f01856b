-- A published alert transition stays in the outbox for a replay window, with where Kafka put
-- it, so a broker that loses acknowledged records (its log's end moves back after a crash)
-- gets them again (streams.outbox.drain_outbox).
alter table alert_outbox add column if not exists published_at timestamptz;
alter table alert_outbox add column if not exists kafka_partition integer;
alter table alert_outbox add column if not exists kafka_offset bigint;
create index if not exists alert_outbox_unpublished on alert_outbox (seq) where published_at is null;
