-- The task orchestrator's schema at 0001_baseline. Its tables depend on two contrib extensions:
-- pg_trgm (a GIN trigram index on flow run names) and citext (case-insensitive deployment slugs).
create extension if not exists pg_trgm;
create extension if not exists citext;

create table deployments (
    id bigint primary key,
    name text not null,
    slug citext not null unique
);

create table flow_runs (
    id bigint primary key,
    deployment_id bigint not null references deployments (id),
    name text not null,
    state text not null,
    created timestamptz not null
);
create index ix_flow_runs_name_trgm on flow_runs using gin (name gin_trgm_ops);

create table flow_run_archive (
    id bigint primary key,
    deployment_id bigint not null,
    name text not null,
    state text not null,
    created timestamptz not null
);
