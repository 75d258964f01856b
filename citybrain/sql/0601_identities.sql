-- Users and service accounts, API keys, browser sessions and JWT signing keys
-- (citybrain.security.identities). Secrets are stored only as hashes, except
-- the signing keys, which the API needs in clear to sign and verify tokens.

create table principals (
    id bigserial primary key,
    name text not null unique check (name ~ '^[A-Za-z][A-Za-z0-9_.@-]{0,63}$'),
    kind text not null check (kind in ('user', 'service')),
    roles text[] not null check (cardinality(roles) > 0),
    districts text[] not null default '{}',
    device_classes text[] not null default '{}',
    topics text[] not null default '{}',
    password_hash text,
    disabled boolean not null default false,
    created_at timestamptz not null default now()
);

create table api_keys (
    prefix text primary key,
    principal_id bigint not null references principals (id) on delete cascade,
    key_hash text not null,
    label text not null default '',
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);
create index api_keys_principal on api_keys (principal_id);

create table sessions (
    token_hash text primary key,
    principal_id bigint not null references principals (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    revoked_at timestamptz
);
create index sessions_principal on sessions (principal_id);
create index sessions_expires on sessions (expires_at);

create table signing_keys (
    kid text primary key,
    secret bytea not null check (length(secret) >= 32),
    created_at timestamptz not null default now(),
    retired_at timestamptz
);
