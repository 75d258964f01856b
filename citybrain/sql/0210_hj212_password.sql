-- HJ 212 station access passwords (the frame's PW; issue 10). Stored only as a
-- scrypt hash (`citybrain devices credentials rotate CODE --hj212`), checked by
-- the HJ 212 connector once per connection and MN. A column of its own, not
-- secret_hash: a PW is at most 6 characters, and must never work as an MQTT secret.
alter table devices add column if not exists hj212_pw_hash text;
