-- Command resend over MQTT (issue #4): an unanswered command goes back to 'queued' and is
-- sent again when its device reconnects (a live birth on citybrain/up/{code}/status) or when
-- timeout_s passes without an answer, at most CITYBRAIN_COMMAND_MAX_ATTEMPTS sends in all and
-- only while its TTL lasts. Devices deduplicate by command id (docs/commands.md).
--   attempts      sends so far (0: never sent)
--   last_sent_at  the latest send; the answer timeout runs from it (sent_at stays the first)
alter table commands add column if not exists attempts integer not null default 0;
alter table commands add column if not exists last_sent_at timestamptz;
update commands set attempts = 1, last_sent_at = sent_at where sent_at is not null and attempts = 0;
-- The reconnect path looks up a device's unanswered commands.
create index if not exists commands_device_sent on commands (device_code) where state = 'sent';
