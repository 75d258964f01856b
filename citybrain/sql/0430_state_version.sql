-- A version per device's rule and detector state, incremented by every write, so a worker
-- may keep the state it wrote in memory and trust it only while the row still carries the
-- version it wrote (streams.state.StateCache; docs/store.md, "State in memory").
alter table rule_state add column if not exists version bigint not null default 0;
alter table anomaly_state add column if not exists version bigint not null default 0;
