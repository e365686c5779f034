-- otbus event store, version 1.
-- Every event the store consumes, with its CloudEvents envelope, its payload as JSONB
-- and where it came from in Kafka. Partitioned by event time (daily partitions are
-- created ahead by the event-store service; a DEFAULT partition catches the rest).
-- Idempotent by event id: (tenant, event_id, time) is the key, and a redelivered event has
-- all three (the tenant is in the key so that no tenant can claim another one's event ids).

CREATE TABLE IF NOT EXISTS otbus_events (
    event_id        uuid        NOT NULL,
    time            timestamptz NOT NULL,
    tenant          text        NOT NULL,
    type            text        NOT NULL,
    source          text        NOT NULL,
    subject         text,
    correlation_id  text,
    causation_id    text,
    dataschema      text,
    content_type    text,
    payload         jsonb       NOT NULL,
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, event_id, time)
) PARTITION BY RANGE (time);

CREATE TABLE IF NOT EXISTS otbus_events_default PARTITION OF otbus_events DEFAULT;

-- Keyset pagination by (time, event_id) within a tenant, and the query filters.
CREATE INDEX IF NOT EXISTS otbus_events_tenant_time ON otbus_events (tenant, time, event_id);
CREATE INDEX IF NOT EXISTS otbus_events_tenant_subject ON otbus_events (tenant, subject text_pattern_ops, time);
CREATE INDEX IF NOT EXISTS otbus_events_tenant_type ON otbus_events (tenant, type, time);
CREATE INDEX IF NOT EXISTS otbus_events_tenant_correlation ON otbus_events (tenant, correlation_id)
    WHERE correlation_id IS NOT NULL;

-- Row-level security: the query API reads as otbus_query with otbus.tenant set per
-- transaction, so a token never reads another tenant's rows even if a filter were lost.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'otbus_query') THEN
        CREATE ROLE otbus_query NOLOGIN;
    END IF;
END
$$;
GRANT otbus_query TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO otbus_query;
GRANT SELECT ON otbus_events TO otbus_query;

ALTER TABLE otbus_events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS otbus_tenant_isolation ON otbus_events;
CREATE POLICY otbus_tenant_isolation ON otbus_events FOR SELECT TO otbus_query
    USING (tenant = current_setting('otbus.tenant', true));

-- Creates the daily partition holding `day` if it does not exist yet. Rows of that day
-- already in the DEFAULT partition (late or early events) are moved into it, so a day's
-- partition can always be created.
CREATE OR REPLACE FUNCTION otbus_ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := format('otbus_events_p%s', to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    IF EXISTS (SELECT 1 FROM otbus_events_default WHERE time >= lo AND time < hi) THEN
        EXECUTE format('CREATE TABLE %I (LIKE otbus_events INCLUDING DEFAULTS)', name);
        EXECUTE format(
            'WITH moved AS (DELETE FROM otbus_events_default WHERE time >= %L AND time < %L RETURNING *)'
            ' INSERT INTO %I SELECT * FROM moved', lo, hi, name);
        EXECUTE format('ALTER TABLE otbus_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF otbus_events FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    END IF;
    RETURN name;
END
$$;
