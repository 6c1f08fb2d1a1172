"""The Delta Chat extension's tables: device tokens, numbered migrations of its own part."""

from __future__ import annotations

from pushproxy.store.schema import SchemaPart

__all__ = ["DELTACHAT"]

DELTACHAT = SchemaPart(
    "deltachat",
    (
        # 1: tokens encrypted at rest; a keyed hash (vault key) keeps them unique and searchable
        (
            """CREATE TABLE deltachat_tokens (
                account TEXT NOT NULL,
                token_hash {blob} NOT NULL,         -- HMAC of the token under a key derived from the vault key
                token {blob} NOT NULL,              -- vault-encrypted, aad names the account
                first_registered {real} NOT NULL,
                last_registered {real} NOT NULL,
                PRIMARY KEY (account, token_hash)
            )""",
            "CREATE INDEX deltachat_tokens_by_token_hash ON deltachat_tokens (token_hash)",
            "CREATE INDEX deltachat_tokens_by_last_registered ON deltachat_tokens (last_registered)",
        ),
    ),
    registered_accounts="SELECT account FROM deltachat_tokens",
)
