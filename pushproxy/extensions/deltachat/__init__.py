"""Delta Chat push: ``SETMETADATA "INBOX" (/private/devicetoken ...)`` -> the Delta Chat notification gateway.

The package: :mod:`.addon` (the extension the core sees), :mod:`.commands`
(the METADATA commands it takes over), :mod:`.store` / :mod:`.schema` (the
tokens, encrypted), :mod:`.notifier` (POSTs to the gateway), :mod:`.settings`
(the ``deltachat`` section), :mod:`.metrics`, :mod:`.admin` (``pushproxy
deltachat list|remove``).
"""
