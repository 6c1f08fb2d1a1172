"""One normalisation of login names, used everywhere an account is a key."""

from __future__ import annotations


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
