-- The embedding queue: one entry per (registration, target, row key), written by the sync triggers in
-- the writer's own transaction, claimed by workers with FOR UPDATE SKIP LOCKED and a lease, and removed
-- by a compare-and-set write-back (only at the version it claimed). See docs/QUEUE.md.
--
-- target 0 is the registration's live vector column; target 1 is the shadow column of a pending
-- qwen_alter. Keys are the row's primary key values as text[] (built-in key types only, rendered with
-- pinned DateStyle/IntervalStyle/extra_float_digits/TimeZone, so the same row always has the same key).

-- Versions are the claim's compare-and-set token: every (re-)enqueue takes a new one, never reused, so
-- a write-back of an older claim can never remove a newer entry (even one deleted and re-created).
CREATE SEQUENCE qwen.queue_version_seq AS bigint;
SELECT pg_catalog.pg_extension_config_dump('qwen.queue_version_seq', '');

CREATE TABLE qwen.queue (
    registration_id int      NOT NULL REFERENCES qwen.registrations (id) ON DELETE CASCADE,
    target          smallint NOT NULL DEFAULT 0 CHECK (target IN (0, 1)),
    key             text[]   NOT NULL,
    version         bigint   NOT NULL DEFAULT pg_catalog.nextval('qwen.queue_version_seq'),
    backfill        boolean  NOT NULL DEFAULT false,  -- queued by a (re)backfill, not by a change since
    enqueued_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int      NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT '-infinity',  -- retry backoff
    leased_by       bigint,
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz,                      -- parked after too many attempts
    PRIMARY KEY (registration_id, target, key)
) WITH (fillfactor = 45);
-- Half of each page stays free: a claim leases every entry of a page at once (they are claimed in the order
-- they were queued), and each new row version must fit on the same page for the update to be HOT (no index
-- writes). At 70 only about half of the leases were HOT (docs/QUEUE.md "Performance").
COMMENT ON TABLE qwen.queue IS 'rows waiting to be (re-)embedded; parked entries have failed_at and last_error';
CREATE INDEX queue_claim_order ON qwen.queue (registration_id, target, enqueued_at) WHERE failed_at IS NULL;
-- (no index on leased_by: it would make every lease a non-HOT update; the few lookups by worker are rare)
-- A write-back finds its entries by version (unique: every enqueue takes a new one). Its probe by key cannot
-- use the primary key for a worker role that is not the queue's owner: text[] equality is not leakproof, so
-- row-level security makes the planner test it only after the policy, on every entry of the registration.
CREATE INDEX queue_version ON qwen.queue (version);
SELECT pg_catalog.pg_extension_config_dump('qwen.queue', '');

-- Keys are row data: a role sees the entries of tables it may SELECT; a worker's role changes only the
-- entries of tables whose owner it can act as (the writers' triggers write as the extension owner).
ALTER TABLE qwen.queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY queue_read ON qwen.queue FOR SELECT
    USING (EXISTS (SELECT 1 FROM qwen.registrations r
                   WHERE r.id = registration_id AND pg_catalog.has_table_privilege(current_user, r.source, 'SELECT')));
CREATE POLICY queue_worker ON qwen.queue FOR ALL
    USING (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                   WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')))
    WITH CHECK (EXISTS (SELECT 1 FROM qwen.registrations r JOIN pg_catalog.pg_class c ON c.oid = r.source
                        WHERE r.id = registration_id AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));

-- Live workers (heartbeats). A worker whose heartbeat is older than 3 intervals is dead: its leases
-- are claimable at once, without waiting for lease_until.
CREATE TABLE qwen.workers (
    id                 bigserial PRIMARY KEY,
    model              text NOT NULL,
    backend            text,
    host               text,
    pid                int,
    heartbeat_interval interval NOT NULL DEFAULT '5 seconds',
    started_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    heartbeat_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rows_done          bigint NOT NULL DEFAULT 0,
    batches_done       bigint NOT NULL DEFAULT 0,
    role               name NOT NULL DEFAULT current_user  -- the worker's database role (qwen_status.worker_skips)
);
COMMENT ON TABLE qwen.workers IS 'embedder workers and their heartbeats (see qwen_status.workers)';
