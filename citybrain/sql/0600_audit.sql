-- Append-only audit log with a hash chain (citybrain.security.audit).
--
-- Each row stores prev_hash (the previous row's hash, 64 zeros for the first)
-- and hash = sha256 over a canonical serialisation of its own fields and
-- prev_hash, computed by the writer. Writers serialise on the single row of
-- audit_chain_head (select ... for update), so two concurrent writers can
-- never both extend the same predecessor: the chain does not fork.
--
-- The triggers below refuse UPDATE, DELETE and TRUNCATE. A superuser (or the
-- table owner) can still disable them; the hash chain is what detects that.

create table audit_chain_head (
    id boolean primary key default true check (id),
    seq bigint not null default 0,
    hash text not null default repeat('0', 64)
);
insert into audit_chain_head default values;

create table audit_log (
    seq bigint primary key check (seq > 0),
    at timestamptz not null,
    actor text not null,
    action text not null,
    resource text not null default '',
    outcome text not null,
    ip text,
    details jsonb not null default '{}'::jsonb,
    prev_hash text not null check (prev_hash ~ '^[0-9a-f]{64}$'),
    hash text not null unique check (hash ~ '^[0-9a-f]{64}$')
);
create index audit_log_actor on audit_log (actor, seq);
create index audit_log_action on audit_log (action, seq);
create index audit_log_at on audit_log (at);

create function audit_log_refuse() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only (% refused)', tg_op using errcode = 'insufficient_privilege';
end;
$$;

create trigger audit_log_no_update before update or delete on audit_log
    for each row execute function audit_log_refuse();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_refuse();
