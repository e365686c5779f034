-- otbus, version 3: relaying a plant's own tables (Lakebase) to the live feed.
--
-- A table opts in with one call:
--
--     SELECT otbus_relay_table('agentic_hmi.work_orders', 'work_order_changed',
--                              tenant_column => 'tenant', subject_column => 'equipment_path');
--
-- From then on every INSERT, UPDATE and DELETE of a row is written to `otbus_relay_events`
-- (the row as JSON, numbered from the same commit-ordered sequence as the event store, see
-- 002_live_feed.sql) and announced with NOTIFY on the given channel. The notification holds
-- a reference, plus the row itself when it fits in NOTIFY's 8000 bytes (`"row"`); a larger
-- row is announced with `"row_ref": true` and read from `otbus_relay_events`, so a large row
-- never makes the plant's write fail. The notify bridge relays these to WebSocket clients of
-- the row's tenant and replays them to clients that resume.
--
-- A row whose tenant column is NULL or not a tenant id is not relayed (a warning is logged); its
-- write succeeds. The relay runs when the writing transaction commits (deferred constraint
-- triggers): the feed's lock is held only for that moment, never while the plant's transaction
-- is open, and a rolled-back write is never announced. It runs with the rights of the functions'
-- owner, so plant roles need no rights on otbus_relay_events. Whoever may write a relayed table
-- decides the tenant its rows are relayed to: grant writes on such tables accordingly.

CREATE TABLE IF NOT EXISTS otbus_relay_events (
    seq       bigint      PRIMARY KEY DEFAULT nextval('otbus_feed_seq'),
    event_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant    text        NOT NULL,
    channel   text        NOT NULL,
    type      text        NOT NULL,
    subject   text,
    time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    source    text        NOT NULL,
    payload   jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS otbus_relay_events_tenant_seq ON otbus_relay_events (tenant, seq);
CREATE UNIQUE INDEX IF NOT EXISTS otbus_relay_events_tenant_id ON otbus_relay_events (tenant, event_id);
CREATE INDEX IF NOT EXISTS otbus_relay_events_time ON otbus_relay_events (time);
GRANT SELECT ON otbus_relay_events TO otbus_feed;

-- Trigger function; arguments: channel, tenant column, subject column ('' for none),
-- event type ('' for '<table>.<insert|update|delete>').
CREATE OR REPLACE FUNCTION otbus_relay_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    row_json jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
    row_tenant text := row_json ->> TG_ARGV[1];
    row_subject text := CASE WHEN coalesce(TG_ARGV[2], '') = '' THEN NULL ELSE row_json ->> TG_ARGV[2] END;
    event_type text := coalesce(nullif(TG_ARGV[3], ''), TG_TABLE_NAME || '.' || lower(TG_OP));
    ev otbus_relay_events;
    note jsonb;
BEGIN
    IF row_tenant IS NULL OR row_tenant !~ '^[a-z0-9][a-z0-9-]{0,62}$' THEN
        RAISE WARNING 'otbus relay: a row of %.% has no tenant id in column % (%); not relayed',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[1], left(row_tenant, 80);
        RETURN NULL;
    END IF;
    PERFORM otbus_feed_lock();
    INSERT INTO otbus_relay_events (tenant, channel, type, subject, source, payload)
    VALUES (row_tenant, TG_ARGV[0], event_type, row_subject, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, row_json)
    RETURNING * INTO ev;
    note := jsonb_build_object('seq', ev.seq, 'id', ev.event_id, 'tenant', ev.tenant, 'type', left(ev.type, 200),
                               'subject', left(ev.subject, 900), 'time', ev.time);
    IF octet_length(row_json::text) + octet_length(note::text) < 7900 THEN
        note := note || jsonb_build_object('row', row_json);
    ELSE
        note := note || jsonb_build_object('row_ref', true);
    END IF;
    PERFORM pg_notify(ev.channel, note::text);
    RETURN NULL;
END
$$;

-- The one call that opts a table in (INSERT, UPDATE and DELETE; call again to change it).
CREATE OR REPLACE FUNCTION otbus_relay_table(
    tbl regclass, channel text, tenant_column text DEFAULT 'tenant', subject_column text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    trigger_name text := 'otbus_relay_' || channel;
BEGIN
    IF channel !~ '^[a-z_][a-z0-9_]{0,49}$' THEN
        RAISE EXCEPTION 'otbus_relay_table: channel % must match ^[a-z_][a-z0-9_]{0,49}$', channel;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = tenant_column AND NOT attisdropped) THEN
        RAISE EXCEPTION 'otbus_relay_table: % has no column % (tenant_column)', tbl, tenant_column;
    END IF;
    IF subject_column IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = subject_column AND NOT attisdropped) THEN
        RAISE EXCEPTION 'otbus_relay_table: % has no column % (subject_column)', tbl, subject_column;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_name, tbl);
    EXECUTE format(
        'CREATE CONSTRAINT TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s'
        ' DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION otbus_relay_row(%L, %L, %L, %L)',
        trigger_name, tbl, channel, tenant_column, coalesce(subject_column, ''), '');
    RETURN trigger_name;
END
$$;

-- The AI-recommendation queue of the operators' HMI (seed 002: Lakebase
-- agentic_hmi.agent_recommendations), with its two notifications as shipped:
--   recommendation_inserted        a new recommendation
--   recommendation_status_changed  an operator approved, rejected, deferred or executed one
-- `tenant` is the plant's tenant (the writer sets it); `subject` the equipment's ISA-95 path.
CREATE SCHEMA IF NOT EXISTS agentic_hmi;
CREATE TABLE IF NOT EXISTS agentic_hmi.agent_recommendations (
    recommendation_id  uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant             text             NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    equipment_id       text             NOT NULL,
    subject            text,
    issue_type         text             NOT NULL,
    severity           text             NOT NULL DEFAULT 'medium'
                                        CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    issue_description  text,
    recommended_action text             NOT NULL,
    confidence_score   double precision CHECK (confidence_score BETWEEN 0 AND 1),
    status             text             NOT NULL DEFAULT 'pending'
                                        CHECK (status IN ('pending', 'approved', 'rejected', 'deferred', 'executed')),
    operator_id        text,
    operator_notes     text,
    created_timestamp  timestamptz      NOT NULL DEFAULT now(),
    updated_timestamp  timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_recommendations_pending
    ON agentic_hmi.agent_recommendations (tenant, created_timestamp) WHERE status = 'pending';

CREATE OR REPLACE FUNCTION agentic_hmi.touch_updated_timestamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_timestamp := now();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS touch_updated_timestamp ON agentic_hmi.agent_recommendations;
CREATE TRIGGER touch_updated_timestamp BEFORE UPDATE ON agentic_hmi.agent_recommendations
    FOR EACH ROW EXECUTE FUNCTION agentic_hmi.touch_updated_timestamp();

DROP TRIGGER IF EXISTS recommendation_inserted ON agentic_hmi.agent_recommendations;
CREATE CONSTRAINT TRIGGER recommendation_inserted AFTER INSERT ON agentic_hmi.agent_recommendations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION
    otbus_relay_row('recommendation_inserted', 'tenant', 'subject', 'recommendation.inserted');
DROP TRIGGER IF EXISTS recommendation_status_changed ON agentic_hmi.agent_recommendations;
CREATE CONSTRAINT TRIGGER recommendation_status_changed AFTER UPDATE OF status ON agentic_hmi.agent_recommendations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION
    otbus_relay_row('recommendation_status_changed', 'tenant', 'subject', 'recommendation.status_changed');
