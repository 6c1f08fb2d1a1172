"""One normalisation of login names, used everywhere an account is a key; and of the INBOX name."""

from __future__ import annotations

from collections.abc import Collection


def normalise_account(login: str) -> str:
    """Registrations, credentials and watcher state are keyed by this form.

    IMAP servers treat logins case-insensitively in practice (Dovecot lowercases
    with ``auth_username_format = %Lu``; Cyrus and Courier likewise), and iOS may
    register with ``Alice`` while a watcher logs in as ``alice``: fold case and
    surrounding blanks so both meet.  The original spelling is kept with the
    credentials and used for upstream logins.
    """
    return login.strip().lower()


def is_inbox(mailbox: str) -> bool:
    return mailbox.upper() == "INBOX"


def canonical_mailbox(mailbox: str) -> str:
    return "INBOX" if is_inbox(mailbox) else mailbox


def mailbox_matches(registered: Collection[str], mailbox: str) -> bool:
    """INBOX matches case-insensitively; other names exactly (they are case-sensitive in IMAP)."""
    if is_inbox(mailbox):
        return any(is_inbox(m) for m in registered)
    return mailbox in registered
