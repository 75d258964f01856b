-- Rollup bookkeeping (streams/rollup.py). The rollup tables themselves are
-- derived from the device models by citybrain.migrations.ensure_class_tables.

-- Buckets a store flush touched, appended in the flush's transaction. No
-- unique key on purpose: concurrent workers append without waiting on each
-- other, and the rollup job consumes duplicates in one delete.
create table if not exists rollup_dirty (
    device_class text        not null,
    resolution   text        not null,
    bucket       timestamptz not null,
    marked_at    timestamptz not null default now()
);
create index if not exists rollup_dirty_class on rollup_dirty (device_class, resolution);

-- What the rollup job last did per class and level.
create table if not exists rollup_watermark (
    device_class      text        not null,
    resolution        text        not null,
    refreshed_at      timestamptz not null,
    buckets           bigint      not null default 0,
    refreshed_through timestamptz,
    primary key (device_class, resolution)
);
