-- Shelving (silencing) an alert for a while, with a reason (ISA-18.2 "shelved").
-- Orthogonal to the lifecycle state: a shelved alert keeps its state (open or
-- acknowledged) and returns to normal when shelved_until passes. Who shelved it and
-- why is in alert_history (action 'shelve' / 'unshelve') and the audit log.
alter table alerts add column if not exists shelved_until timestamptz;
alter table alerts add column if not exists shelved_reason text;
alter table alerts add column if not exists shelved_by text;
create index if not exists alerts_shelved on alerts (shelved_until) where shelved_until is not null;
