"""The schema of the store: its named migrations and the SQL statements ``store.py`` runs.

Only ``store.py`` imports this module (it is the SQL half of the store, split off to keep each
file readable); no other module holds SQL.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_events_profiles",
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            name TEXT,
            person_id TEXT NOT NULL,
            anonymous_id TEXT,
            user_id TEXT,
            source TEXT NOT NULL,
            received_at REAL NOT NULL,
            timestamp TEXT,
            body BLOB NOT NULL
        );
        CREATE INDEX events_person ON events (person_id, received_at);
        CREATE INDEX events_received ON events (received_at);
        CREATE TABLE profiles (
            person_id TEXT PRIMARY KEY,
            user_id TEXT,
            email TEXT,
            claimed_email TEXT,
            traits TEXT NOT NULL DEFAULT '{}',
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE INDEX profiles_email ON profiles (email);
        CREATE TABLE identities (
            anonymous_id TEXT PRIMARY KEY,
            person_id TEXT NOT NULL
        );
        CREATE INDEX identities_person ON identities (person_id);
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
    (
        "0002_runs_timers_steps",
        """
        ALTER TABLE profiles ADD COLUMN orders_count INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE profiles ADD COLUMN total_spent REAL NOT NULL DEFAULT 0;
        ALTER TABLE profiles ADD COLUMN last_order_at REAL;
        ALTER TABLE profiles ADD COLUMN order_times TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE profiles ADD COLUMN opens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE profiles ADD COLUMN clicks INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE profiles ADD COLUMN time_zone TEXT;
        ALTER TABLE profiles ADD COLUMN consent TEXT NOT NULL DEFAULT 'none';
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            person_id TEXT NOT NULL,
            key TEXT NOT NULL,
            started REAL NOT NULL,
            step INTEGER NOT NULL,
            step_kind TEXT NOT NULL,
            variant TEXT NOT NULL,
            holdout INTEGER NOT NULL,
            wait_met INTEGER NOT NULL,
            sends INTEGER NOT NULL,
            due REAL,
            state TEXT NOT NULL,
            ended_at REAL,
            end_reason TEXT,
            updated_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX runs_one_open ON runs (workflow, person_id, key) WHERE state = 'active';
        CREATE INDEX runs_person ON runs (person_id, state);
        CREATE INDEX runs_ended ON runs (person_id, workflow, key, ended_at) WHERE state = 'ended';
        CREATE TABLE timers (
            run_id TEXT PRIMARY KEY,
            step INTEGER NOT NULL,
            due REAL NOT NULL,
            person_id TEXT NOT NULL
        );
        CREATE INDEX timers_due ON timers (due);
        CREATE TABLE steps (
            run_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            person_id TEXT NOT NULL,
            workflow TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL,
            capped INTEGER NOT NULL,
            decided_at REAL NOT NULL,
            PRIMARY KEY (run_id, step)
        );
        CREATE INDEX steps_person ON steps (person_id, capped, decided_at);
        CREATE INDEX steps_decided ON steps (decided_at);
        """,
    ),
    (
        "0003_schedules",
        """
        CREATE TABLE schedules (
            workflow TEXT PRIMARY KEY,
            next_at REAL NOT NULL,
            cursor TEXT
        );
        """,
    ),
    (
        "0004_outbox_suppressions_sink",
        """
        CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            run_id TEXT,
            step INTEGER,
            person_id TEXT NOT NULL,
            workflow TEXT NOT NULL,
            template TEXT NOT NULL,
            variant TEXT NOT NULL,
            marketing INTEGER NOT NULL,
            recipient TEXT,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            ambiguous INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_until REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            sent_at REAL,
            last_code INTEGER,
            last_error TEXT,
            extra TEXT NOT NULL DEFAULT '{}'
        );
        CREATE UNIQUE INDEX outbox_run_step ON outbox (run_id, step) WHERE run_id IS NOT NULL;
        CREATE INDEX outbox_due ON outbox (next_attempt_at)
            WHERE state IN ('queued', 'retry_wait', 'ambiguous');
        CREATE INDEX outbox_sending ON outbox (lease_until) WHERE state = 'sending';
        CREATE INDEX outbox_person ON outbox (person_id);
        CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
        CREATE TABLE suppressions (
            email_hash TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE confirmations (
            email_hash TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            sent_at REAL NOT NULL
        );
        CREATE INDEX confirmations_email ON confirmations (email_hash, sent_at);
        CREATE INDEX confirmations_ip ON confirmations (client_ip, sent_at);
        CREATE TABLE sink_messages (
            id INTEGER PRIMARY KEY,
            message_id TEXT,
            mail_from TEXT NOT NULL,
            recipients TEXT NOT NULL,
            subject TEXT NOT NULL,
            received_at REAL NOT NULL,
            body BLOB NOT NULL
        );
        """,
    ),
    # The product of a view, for the mail's co-viewed and popular products (_outbox.py). A
    # virtual generated column (computed on read, no space in the table) under a partial
    # index, not an index on the expression: SQLite before 3.41 recomputes an indexed
    # expression from the row (json_extract of every body) even where the index holds it,
    # while an indexed column is read from the index (popular: 104 -> 17 ms over 120k views).
    # Only views pay for it when inserted (~1.6 us each). A second index, by person, would
    # make co_viewed's second half index-only too, but costs ~9 us a view: a person's rows are
    # spread over the index, so each group commit dirties a page per person.
    (
        "0005_product_views",
        """
        ALTER TABLE events ADD COLUMN product_id TEXT GENERATED ALWAYS AS (coalesce(
            json_extract(CAST(body AS TEXT), '$.properties.product_id'),
            json_extract(CAST(body AS TEXT), '$.properties.sku'))) VIRTUAL;
        CREATE INDEX events_product_viewers ON events (product_id, received_at, person_id)
            WHERE name = 'Product Viewed';
        """,
    ),
    # The ids of signed inbound webhooks processed: a replay within the retention
    # answers 200 without doing anything twice.
    (
        "0006_webhooks",
        """
        CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            received_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX webhooks_received ON webhooks (received_at);
        """,
    ),
    # Suppressions and confirmations key their address hashes with a salt of this store
    # (the SQL function email_hash(address), registered by Store.open). Entries made before
    # hold the plain SHA-256: lookups match legacy_email_hash(address) too, erasure drops it.
    (
        "0007_email_salt",
        """
        INSERT INTO secrets (name, value, created_at)
            VALUES ('email_salt', lower(hex(randomblob(32))), 0)
            ON CONFLICT (name) DO NOTHING;
        """,
    ),
    # The webhooks workflows send, decided in the group commit like mails; their id is
    # the webhook-id of every attempt. An endpoint that answered 410 Gone is disabled.
    (
        "0008_deliveries",
        """
        CREATE TABLE deliveries (
            id TEXT PRIMARY KEY,
            run_id TEXT,
            step INTEGER,
            person_id TEXT NOT NULL,
            workflow TEXT NOT NULL,
            url TEXT NOT NULL,
            payload BLOB NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_until REAL,
            last_status INTEGER,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
            WHERE state IN ('queued', 'retry_wait', 'sending');
        CREATE INDEX deliveries_person ON deliveries (person_id);
        CREATE TABLE disabled_endpoints (
            url TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            disabled_at REAL NOT NULL
        );
        """,
    ),
    # Dashboard sessions ended by a logout stay ended after a restart, until they expire.
    (
        "0009_revoked_sessions",
        """
        CREATE TABLE revoked_sessions (
            id TEXT PRIMARY KEY,
            revoked_at REAL NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    # The dashboard's funnel reads a window of opens, clicks and orders: partial indexes, so
    # only those events pay for them (each WHERE is spelled as the funnel's queries spell it,
    # or SQLite cannot use the index).
    (
        "0010_funnel_indexes",
        """
        CREATE INDEX events_touches ON events (received_at)
            WHERE name IN ('Email Opened', 'Email Clicked');
        CREATE INDEX events_orders ON events (received_at) WHERE name = 'Order Completed';
        """,
    ),
    (
        "0011_claimed_traits_used_tokens",
        # Traits a browser claimed for itself are kept apart from the trusted ones: mail shows
        # only trusted traits. Anonymous profiles' traits so far came from browsers.
        """
        ALTER TABLE profiles ADD COLUMN claimed_traits TEXT NOT NULL DEFAULT '{}';
        UPDATE profiles SET claimed_traits = traits, traits = '{}'
            WHERE user_id IS NULL AND traits != '{}';
        CREATE TABLE used_tokens (
            digest TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            used_at REAL NOT NULL
        );
        """,
    ),
    (
        "0012_catalog",
        # The shop's products, from trusted sources only; the feeds' validators; the changes
        # the catalog triggers still owe (written with the product, so none is lost); the
        # products each sent mail showed (so picks shown and ignored rank lower); carts and
        # back-in-stock requests by product (views have their index already).
        """
        CREATE TABLE products (
            id TEXT PRIMARY KEY,
            sku TEXT,
            name TEXT NOT NULL,
            url TEXT,
            image TEXT,
            price REAL,
            sale_price REAL,
            currency TEXT,
            categories TEXT NOT NULL DEFAULT '[]',
            category TEXT,
            brand TEXT,
            availability TEXT NOT NULL,
            item_group TEXT,
            image_host TEXT,
            source TEXT NOT NULL,
            updated_at REAL NOT NULL,
            seen_at REAL NOT NULL,
            changed_at REAL
        );
        CREATE INDEX products_source ON products (source, seen_at);
        CREATE INDEX products_category ON products (category, availability, updated_at);
        CREATE TABLE feeds (
            url TEXT PRIMARY KEY,
            etag TEXT,
            last_modified TEXT,
            fetched_at REAL NOT NULL,
            outcome TEXT NOT NULL
        );
        CREATE TABLE catalog_changes (
            product_id TEXT NOT NULL,
            at REAL NOT NULL,
            restocked INTEGER NOT NULL,
            old_price REAL,
            PRIMARY KEY (product_id, at)
        );
        CREATE TABLE mail_products (
            mail_id TEXT NOT NULL,
            person_id TEXT NOT NULL,
            product_id TEXT NOT NULL,
            url TEXT,
            at REAL NOT NULL,
            PRIMARY KEY (mail_id, product_id)
        );
        CREATE INDEX mail_products_person ON mail_products (person_id, at);
        CREATE INDEX events_product_interest ON events (product_id, received_at, person_id)
            WHERE name IN ('Product Added', 'Back In Stock Requested');
        """,
    ),
    (
        "0013_poll_state",
        # Where each polling source stands: the cursor (JSON) to read from next, written only
        # after the page before it was committed, so a restart resumes there; and its status.
        """
        CREATE TABLE poll_state (
            name TEXT PRIMARY KEY,
            cursor TEXT,
            last_run REAL,
            last_error TEXT,
            next_run REAL,
            caught_up_at REAL,
            failures INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        """,
    ),
    (
        "0014_engagement",
        # Send-time optimisation: each person's engagement by hour of the week (JSON, sparse:
        # [at, hour, weight, hour, weight, ...]), the shop's (the one row, the prior), and how
        # a run's pending send was timed (JSON, until it sends).
        """
        ALTER TABLE profiles ADD COLUMN engagement TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE runs ADD COLUMN timing TEXT NOT NULL DEFAULT '';
        CREATE TABLE shop_engagement (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            histogram TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    # An event's product, written with the event instead of generated from its body: the
    # generated column ran json_extract on every insert for the index (about 3.5 us an event,
    # a quarter of what a group commit spends on an event's row and indexes).
    (
        "0015_product_column",
        """
        DROP INDEX events_product_viewers;
        DROP INDEX events_product_interest;
        ALTER TABLE events DROP COLUMN product_id;
        ALTER TABLE events ADD COLUMN product_id TEXT;
        UPDATE events SET product_id = coalesce(
            json_extract(CAST(body AS TEXT), '$.properties.product_id'),
            json_extract(CAST(body AS TEXT), '$.properties.sku'))
        WHERE json_type(CAST(body AS TEXT), '$.properties') = 'object';
        CREATE INDEX events_product_viewers ON events (product_id, received_at, person_id)
            WHERE name = 'Product Viewed';
        CREATE INDEX events_product_interest ON events (product_id, received_at, person_id)
            WHERE name IN ('Product Added', 'Back In Stock Requested');
        """,
    ),
    (
        "0016_bandit",
        # Self-tuning variants: each mail a bandit step sent, its arm, and when it first reached
        # the step's goal (a human click, or an order attributed to it). The arms' counts are
        # this table grouped; no personal data (the mail id is a digest and a step number).
        """
        CREATE TABLE bandit_mails (
            mail_id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            step INTEGER NOT NULL,
            variant TEXT NOT NULL,
            sent_at REAL NOT NULL,
            rewarded_at REAL
        );
        CREATE INDEX bandit_mails_sent ON bandit_mails (sent_at);
        """,
    ),
    # Every event paid for an index on received_at (about 2 us an insert) that only the
    # retention purge needed: it now finds old events by seq, the order they were stored in.
    # The funnel reads its own partial indexes, a person's history events_person.
    (
        "0017_drop_events_received",
        """
        DROP INDEX events_received;
        """,
    ),
)

USE_TOKEN = (
    "INSERT INTO used_tokens (digest, kind, used_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)
PROBE = "INSERT OR REPLACE INTO secrets (name, value, created_at) VALUES ('probe', '', ?)"
"""A write that proves the store takes writes (a row of the secrets table, never read)."""
GIVE_BACK_TOKEN = "DELETE FROM used_tokens WHERE digest = ?"
TOKEN_USED = "SELECT 1 FROM used_tokens WHERE digest = ?"
INSERT_EVENT = """
    INSERT INTO events (message_id, type, name, person_id, anonymous_id, user_id, source,
                        received_at, timestamp, body, product_id)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (message_id) DO NOTHING
"""
UPSERT_PROFILE = """
    INSERT INTO profiles (person_id, user_id, email, claimed_email, traits, claimed_traits,
                          first_seen, last_seen)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (person_id) DO UPDATE SET
        user_id = coalesce(excluded.user_id, user_id),
        email = coalesce(excluded.email, email),
        claimed_email = coalesce(excluded.claimed_email, claimed_email),
        traits = json_patch(traits, excluded.traits),
        claimed_traits = json_patch(claimed_traits, excluded.claimed_traits),
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen)
"""
MERGE_PROFILE = """
    INSERT INTO profiles (person_id, user_id, email, claimed_email, traits, claimed_traits,
                          first_seen, last_seen)
    SELECT ?, user_id, email, claimed_email, traits, claimed_traits, first_seen, last_seen
    FROM profiles WHERE person_id = ? AND true
    ON CONFLICT (person_id) DO UPDATE SET
        user_id = coalesce(user_id, excluded.user_id),
        email = coalesce(email, excluded.email),
        claimed_email = coalesce(claimed_email, excluded.claimed_email),
        traits = json_patch(excluded.traits, traits),
        claimed_traits = json_patch(excluded.claimed_traits, claimed_traits),
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen)
"""
MERGE_PROFILE_FACTS = """
    UPDATE profiles AS p SET
        orders_count = p.orders_count + old.orders_count,
        total_spent = p.total_spent + old.total_spent,
        last_order_at = max(coalesce(p.last_order_at, 0), coalesce(old.last_order_at, 0)),
        opens = p.opens + old.opens,
        clicks = p.clicks + old.clicks,
        time_zone = coalesce(p.time_zone, old.time_zone),
        engagement = CASE WHEN p.engagement = '[]' THEN old.engagement ELSE p.engagement END,
        consent = CASE
            WHEN 'unsubscribed' IN (p.consent, old.consent) THEN 'unsubscribed'
            WHEN p.consent = 'none' THEN old.consent ELSE p.consent END
    FROM (SELECT * FROM profiles WHERE person_id = ?) AS old
    WHERE p.person_id = ?
"""
# Runs of the merged-away person move over, except where the person already has an open run
# for the same workflow and key (those end: one open run per person and key).
END_CONFLICTING_RUNS = """
    UPDATE runs
    SET state = 'ended', ended_at = ?, end_reason = 'merged into another run', due = NULL
    WHERE person_id = ? AND state = 'active' AND EXISTS (
        SELECT 1 FROM runs AS r WHERE r.person_id = ? AND r.state = 'active'
        AND r.workflow = runs.workflow AND r.key = runs.key)
"""
DROP_ENDED_TIMERS = """
    DELETE FROM timers WHERE person_id = ?
    AND run_id IN (SELECT id FROM runs WHERE person_id = ? AND state = 'ended')
"""
RUN_COLUMNS = (
    "id", "workflow", "person_id", "key", "started", "step", "step_kind", "variant", "holdout",
    "wait_met", "sends", "due", "timing",
)  # fmt: skip
UPSERT_RUN = f"""
    INSERT INTO runs ({", ".join(RUN_COLUMNS)}, state, ended_at, end_reason, updated_at)
    VALUES ({", ".join("?" * len(RUN_COLUMNS))}, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        step = excluded.step, step_kind = excluded.step_kind, variant = excluded.variant,
        wait_met = excluded.wait_met, sends = excluded.sends, due = excluded.due,
        timing = excluded.timing,
        state = excluded.state, ended_at = excluded.ended_at, end_reason = excluded.end_reason,
        updated_at = excluded.updated_at
"""
UPSERT_TIMER = """
    INSERT INTO timers (run_id, step, due, person_id) VALUES (?, ?, ?, ?)
    ON CONFLICT (run_id) DO UPDATE SET step = excluded.step, due = excluded.due
"""
INSERT_STEP = """
    INSERT INTO steps (run_id, step, person_id, workflow, action, detail, capped, decided_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (run_id, step) DO NOTHING
"""
UPSERT_SCHEDULE = """
    INSERT INTO schedules (workflow, next_at, cursor) VALUES (?, ?, ?)
    ON CONFLICT (workflow) DO UPDATE SET next_at = excluded.next_at, cursor = excluded.cursor
"""
UPDATE_PROFILE_FACTS = """
    UPDATE profiles SET orders_count = ?, total_spent = ?, last_order_at = ?, order_times = ?,
        opens = ?, clicks = ?, time_zone = ?, consent = ?, engagement = ?
    WHERE person_id = ?
"""
FACT_COLUMNS = (
    "person_id", "email", "traits", "claimed_traits", "consent", "first_seen", "last_seen",
    "orders_count", "total_spent", "last_order_at", "opens", "clicks", "time_zone", "order_times",
    "engagement", "claimed_email",
)  # fmt: skip
PROFILE_COLUMNS = (
    "person_id",
    "user_id",
    "email",
    "claimed_email",
    "traits",
    "claimed_traits",
    "first_seen",
    "last_seen",
)
UPSERT_SHOP_ENGAGEMENT = """
    INSERT INTO shop_engagement (id, histogram, updated_at) VALUES (1, ?, ?)
    ON CONFLICT (id) DO UPDATE SET histogram = excluded.histogram, updated_at = excluded.updated_at
"""
INSERT_BANDIT_MAIL = """
    INSERT INTO bandit_mails (mail_id, workflow, step, variant, sent_at) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING
"""
REWARD_BANDIT_MAIL = (
    "UPDATE bandit_mails SET rewarded_at = ? WHERE mail_id = ? AND rewarded_at IS NULL"
)
BANDIT_TALLIES = (
    "SELECT workflow, step, variant, count(*), count(rewarded_at) FROM bandit_mails "
    "GROUP BY workflow, step, variant"
)
UPSERT_IDENTITY = """
    INSERT INTO identities (anonymous_id, person_id) VALUES (?, ?)
    ON CONFLICT (anonymous_id) DO UPDATE SET person_id = excluded.person_id
"""

INSERT_OUTBOX = """
    INSERT INTO outbox (id, run_id, step, person_id, workflow, template, variant, marketing,
                        recipient, state, next_attempt_at, created_at, updated_at, extra)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)
    ON CONFLICT DO NOTHING
"""
INSERT_DELIVERY = """
    INSERT INTO deliveries (id, run_id, step, person_id, workflow, url, payload, state,
                            next_attempt_at, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)
    ON CONFLICT DO NOTHING
"""
OUTBOX_COLUMNS = (
    "id", "run_id", "step", "person_id", "workflow", "template", "variant", "marketing",
    "recipient", "state", "attempts", "ambiguous", "next_attempt_at", "lease_until",
    "created_at", "updated_at", "sent_at", "last_code", "last_error",
)  # fmt: skip
