"""XAPPLEPUSHSERVICE: iOS Mail registers for push; the proxy remembers the device and pushes through APNs.

Everything of the protocol is in this package: :mod:`.addon` (the extension
the core sees), :mod:`.settings` (the ``apns`` section), :mod:`.registration`
and :mod:`.command` (the IMAP command), :mod:`.apns` / :mod:`.apns_h2` /
:mod:`.apns_cert` (the sender and its payload), :mod:`.metrics` and
:mod:`.admin` (``pushproxy apns|devices``).  Importing the package is cheap:
the config loader does it.
"""
