"""WEBPUSH (draft-gougeon-imap-webpush): mail clients subscribe Web Push endpoints through IMAP.

Everything of the protocol is in this package: :mod:`.addon` (the extension
the core sees), :mod:`.settings` (the ``webpush`` section),
:mod:`.extension`, :mod:`.commands`, :mod:`.grammar` and :mod:`.ratelimit`
(the IMAP commands), :mod:`.delivery` and :mod:`.changes` (mail events to
subscriptions), :mod:`.payload`, :mod:`.sender`, :mod:`.adapter`,
:mod:`.ssrf` and :mod:`.vapid` (Web Push itself), :mod:`.metrics` and
:mod:`.admin` (``pushproxy subscriptions|vapid``).  Importing the package is
cheap: the config loader does it.
"""
