-- The per-device debug view (GET /api/v1/devices/{code}/debug): a ring of each
-- device's last raw messages with what normalisation made of them, and the dead
-- letters copied from the citybrain.deadletter topic, indexed by device.
create table if not exists device_recent_messages (
    code           text not null,
    slot           smallint not null,
    received_at    timestamptz not null,
    topic          text not null,
    transport      text not null,
    payload        bytea not null,
    readings       jsonb not null default '[]',
    reject_reason  text,
    reject_detail  text,
    primary key (code, slot)
);
create index if not exists device_recent_messages_newest on device_recent_messages (code, received_at desc);

create table if not exists dead_letters (
    kafka_topic     text not null,
    kafka_partition integer not null,
    kafka_offset    bigint not null,
    device_code     text,
    reason          text not null,
    detail          text not null default '',
    source          text not null default '',
    topic           text not null default '',
    received_at     timestamptz not null,
    payload         bytea not null,
    payload_size    integer not null,
    primary key (kafka_topic, kafka_partition, kafka_offset)
);
create index if not exists dead_letters_device on dead_letters (device_code, received_at desc);
create index if not exists dead_letters_received on dead_letters (received_at);
