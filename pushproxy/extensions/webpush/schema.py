"""WEBPUSH's tables: subscriptions, VAPID key metadata, verification counts; numbered migrations of its own part."""

from __future__ import annotations

from pushproxy.store.schema import SchemaPart

__all__ = ["WEBPUSH"]


WEBPUSH = SchemaPart(
    "webpush",
    (
        # 1: subscriptions and VAPID key metadata (single-version schema)
        (
            """CREATE TABLE webpush_subscriptions (
                account TEXT NOT NULL,
                sub_id TEXT NOT NULL,
                endpoint {blob} NOT NULL,           -- vault-encrypted
                p256dh TEXT NOT NULL,
                auth {blob} NOT NULL,               -- vault-encrypted
                vapid_key_id TEXT NOT NULL,
                active {bool} NOT NULL,
                ack_token_hash {blob},
                ack_expires {real},
                silenced_until {real},
                silenced_session TEXT,
                want_changes {bool} NOT NULL,
                created {real} NOT NULL,
                updated {real} NOT NULL,
                last_success {real},
                failures INTEGER NOT NULL,
                PRIMARY KEY (account, sub_id)
            )""",
            "CREATE INDEX webpush_by_ack ON webpush_subscriptions (account, ack_token_hash)",
            "CREATE INDEX webpush_by_session ON webpush_subscriptions (silenced_session)",
            "CREATE INDEX webpush_by_ack_expires ON webpush_subscriptions (active, ack_expires)",
            """CREATE TABLE vapid_keys (
                key_id TEXT PRIMARY KEY,
                public_key TEXT NOT NULL,
                private_key_path TEXT NOT NULL,
                created {real} NOT NULL,
                current {bool} NOT NULL
            )""",
            # At most one current key, enforced by the database.
            "CREATE UNIQUE INDEX vapid_keys_one_current ON vapid_keys (current) WHERE current = {true}",
        ),
        # 2: verification pushes sent in the last hour, counted by every node (keyed hashes, no names)
        (
            """CREATE TABLE webpush_verifications (
                key_hash {blob} NOT NULL,           -- keyed hash (vault key) of the account or the endpoint
                sent {real} NOT NULL                -- database clock
            )""",
            "CREATE INDEX webpush_verifications_by_key ON webpush_verifications (key_hash, sent)",
        ),
    ),
    legacy_version=1,
    registered_accounts="SELECT account FROM webpush_subscriptions WHERE active",
)
