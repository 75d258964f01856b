-- Discharge permits (排污许可证) of pollution sources (issue 19): the ledger's record of
-- what each monitored outlet may discharge. A permit has one holder and a validity;
-- each limit row binds one outlet's monitoring device and one pollutant (a metric of its
-- model) to a concentration limit and load caps, and names the clause it comes from
-- (the permit's own, or the national standard it cites: docs/standards.md §8).
create table if not exists permits (
    permit_no   text primary key,
    holder      text not null,
    valid_from  date not null,
    valid_to    date not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    check (valid_from <= valid_to)
);

create table if not exists permit_limits (
    permit_no    text not null references permits (permit_no) on delete cascade,
    device_code  text not null references devices (code) on delete cascade,
    metric       text not null,
    -- Concentration limit of an hourly mean, in the metric's canonical unit (mg/L, mg/m³);
    -- 0 means 不得检出 (not detectable). Null: the pollutant is capped by load only.
    conc_limit   double precision check (conc_limit >= 0),
    unit         text not null default '',
    clause       text not null,
    day_cap_kg   double precision check (day_cap_kg > 0),
    month_cap_kg double precision check (month_cap_kg > 0),
    year_cap_kg  double precision check (year_cap_kg > 0),
    primary key (device_code, metric)
);
create index if not exists permit_limits_permit on permit_limits (permit_no);
