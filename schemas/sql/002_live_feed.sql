-- otbus event store, version 2: the live feed.
--
-- Every stored event gets `seq`, a number that grows in COMMIT order: a reader that sees
-- seq N committed knows that every smaller seq is either committed too or never will be.
-- That is what lets the notify bridge resume a client (or itself) "after event X" from the
-- store with no gap and no duplicate. Sequence numbers alone grow in call order, not commit
-- order, so every writer of the feed takes one transaction-scoped advisory lock before it
-- draws a number and holds it until it commits: writers of the feed commit one at a time.
-- (PostgreSQL already serialises the commits of transactions that NOTIFY; this moves the
-- point of serialisation to before the numbers are drawn.) The sequence must not cache
-- values per session (CACHE 1), or two sessions would hold interleaved ranges.
--
-- After each INSERT/COPY into otbus_events, one NOTIFY per event on the channel
-- `otbus_events` carries a compact reference, never the payload:
--   {"seq": 42, "id": "<event id>", "tenant": "acme", "type": "otbus.ot.tag.v1",
--    "subject": "<ISA-95 path, at most 900 characters>", "time": "<event time>"}
-- (type cut at 200 characters) so no event is too large to announce: NOTIFY payloads are
-- limited to 8000 bytes, and a character may take 6 once escaped in JSON.
-- Operators: every session that LISTENs must not sit idle in a transaction (set
-- idle_in_transaction_session_timeout for such roles), or the NOTIFY queue cannot be cleaned and,
-- once full, commits of the event store fail until it drains; watch pg_notification_queue_usage().

CREATE SEQUENCE IF NOT EXISTS otbus_feed_seq AS bigint CACHE 1;
ALTER SEQUENCE otbus_feed_seq CACHE 1;

-- The advisory lock key every feed writer takes (any bigint no other code uses).
CREATE OR REPLACE FUNCTION otbus_feed_lock() RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(8029135201) $$;

-- Rows stored before this migration keep seq NULL (no table rewrite on upgrade); they are
-- queryable as before but not part of the live feed. New rows draw a number.
ALTER TABLE otbus_events ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE otbus_events ALTER COLUMN seq SET DEFAULT nextval('otbus_feed_seq');
CREATE INDEX IF NOT EXISTS otbus_events_tenant_seq ON otbus_events (tenant, seq);

CREATE OR REPLACE FUNCTION otbus_events_feed_lock() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM otbus_feed_lock();
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION otbus_events_feed_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('otbus_events', json_build_object(
        'seq', n.seq, 'id', n.event_id, 'tenant', n.tenant, 'type', left(n.type, 200),
        'subject', left(n.subject, 900), 'time', n.time)::text)
    FROM otbus_new AS n ORDER BY n.seq;
    RETURN NULL;
END
$$;

-- Statement-level: the lock is taken once per INSERT/COPY, before any row draws its number,
-- and the notifications are sent from the statement's transition table.
DROP TRIGGER IF EXISTS otbus_events_feed_lock ON otbus_events;
CREATE TRIGGER otbus_events_feed_lock BEFORE INSERT ON otbus_events
    FOR EACH STATEMENT EXECUTE FUNCTION otbus_events_feed_lock();
DROP TRIGGER IF EXISTS otbus_events_feed_notify ON otbus_events;
CREATE TRIGGER otbus_events_feed_notify AFTER INSERT ON otbus_events
    REFERENCING NEW TABLE AS otbus_new
    FOR EACH STATEMENT EXECUTE FUNCTION otbus_events_feed_notify();

-- The role that reads the feed across tenants (the notify bridge; it enforces the tenant of each
-- client itself). A least-privilege bridge login only needs: GRANT otbus_feed TO <its user>.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'otbus_feed') THEN
        CREATE ROLE otbus_feed NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO otbus_feed;
GRANT SELECT ON otbus_events TO otbus_feed;
DROP POLICY IF EXISTS otbus_feed_reads_all ON otbus_events;
CREATE POLICY otbus_feed_reads_all ON otbus_events FOR SELECT TO otbus_feed USING (true);
