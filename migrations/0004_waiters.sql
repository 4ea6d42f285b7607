-- pglock schema, version 4: a release sends NOTIFY only when someone waits.
--
-- Every NOTIFY takes the database's notification lock at commit and so
-- serializes commits; most releases have nobody to wake. A waiter marks
-- itself here (wait_mark) once its first look failed and before it looks
-- again, and removes its mark when it stops waiting. A release calls wake(),
-- which notifies only when a live mark exists.
--
-- A mark of a waiter that died, or whose removal was lost, counts until
-- `until` (the waiter renews it while it waits) and costs at most a NOTIFY
-- nobody hears; it is deleted by the next waiter of the same topic that
-- leaves, or by gc.
CREATE TABLE waiters (
    topic  text NOT NULL,           -- the NOTIFY payload that wakes it: <schema>:<topic>
    waiter uuid NOT NULL,           -- random per wait
    until  timestamptz NOT NULL,    -- the mark counts until then
    PRIMARY KEY (topic, waiter)
);

-- No wake-up is lost between a waiter's mark and a release: wait_mark holds
-- the topic's advisory lock (pglock's class 1885826155, the bytes 'pglk')
-- exclusively and wake() holds it shared, each until its transaction ends.
-- If the mark committed first, wake() (whose check runs after its lock, on
-- a snapshot of its own: a VOLATILE function) sees it and notifies; if the
-- release holds the lock first, the mark waits for the release to commit,
-- and the waiter's next look, sent after the mark, sees the lease free.
-- Releases of one topic share the lock and never wait for each other.
CREATE FUNCTION wait_mark(wake_topic text, waiter_id uuid, ttl_ms bigint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1885826155, hashtext(wake_topic));
    INSERT INTO waiters (topic, waiter, until)
    VALUES (wake_topic, waiter_id, clock_timestamp() + ttl(ttl_ms))
    ON CONFLICT (topic, waiter) DO UPDATE SET until = excluded.until;
END
$$;

-- NOTIFY 'pglock', wake_topic if a live mark waits on it; says whether it did.
CREATE FUNCTION wake(wake_topic text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1885826155, hashtext(wake_topic));
    IF EXISTS (SELECT 1 FROM waiters WHERE topic = wake_topic AND until > clock_timestamp()) THEN
        PERFORM pg_notify('pglock', wake_topic);
        RETURN true;
    END IF;
    RETURN false;
END
$$;

-- A waiter leaving removes its mark, and the topic's marks that aged out.
-- SECURITY DEFINER: application roles need no DELETE right (pglock's
-- operations never delete otherwise); a mark's uuid is random per wait.
CREATE FUNCTION wait_unmark(wake_topic text, waiter_id uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$
    DELETE FROM waiters WHERE topic = wake_topic AND (waiter = waiter_id OR until < clock_timestamp())
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION wait_mark(text, uuid, bigint) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION wake(text) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION wait_unmark(text, uuid) SET search_path = %I, pg_temp', current_schema());
END
$$;
