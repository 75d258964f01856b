-- Transport identities of devices (issue #4), looked up per message at ingest:
-- HJ 212 MN (attribute "mn") and NB-IoT platform device id (attribute "nb_device_id").
-- A device without the attribute uses its own code as that identity.
create index if not exists devices_attr_mn on devices ((attributes ->> 'mn')) where attributes ? 'mn';
create index if not exists devices_attr_nb_device_id on devices ((attributes ->> 'nb_device_id'))
    where attributes ? 'nb_device_id';
