-- The worker's own state documents as json (text, checked for syntax), not jsonb. They are
-- rewritten whole for nearly every device of every batch and read back whole, never
-- queried inside: jsonb's input (a parse tree, every number converted to numeric) was
-- most of PostgreSQL's CPU per message on city-like traffic (docs/benchmarks.md, "Stream
-- worker"). `anomaly_state.peers` stays jsonb: the drift median aggregates inside it.
alter table rule_state alter column snapshot type json using snapshot::json,
    alter column snapshot set default '{}'::json,
    alter column states type json using states::json,
    alter column states set default '{}'::json;
alter table anomaly_state alter column states type json using states::json,
    alter column states set default '{}'::json;
alter table device_recent_messages alter column readings type json using readings::json,
    alter column readings set default '[]'::json;
