"""Capability rewriting (sans-IO).

Upstream's capability list reaches the client in three places: the greeting's
``[CAPABILITY ...]`` code, untagged ``* CAPABILITY`` responses and any status
response carrying ``[CAPABILITY ...]`` (typically the tagged OK of LOGIN or
AUTHENTICATE).  Each is rewritten with the same rules:

- the proxy's own extensions are added (after authentication, and before it
  for those that say so);
- what cannot work end to end through the proxy is removed:
  ``COMPRESS=*`` (the proxy must read the stream), upstream's ``STARTTLS`` and
  ``LOGINDISABLED`` (each leg has its own TLS: the proxy offers STARTTLS to the
  client itself when it has a certificate);
- when push is enabled, SASL mechanisms whose credentials the proxy cannot
  capture for its watchers are removed: only ``AUTH=PLAIN`` (and the LOGIN
  command) stay.  CRAM-MD5/SCRAM never reveal the password, and OAuth tokens
  (XOAUTH2, OAUTHBEARER) expire within the hour, so a watcher could not log in
  with them later.  A client that uses such a mechanism anyway is passed
  through; it just gets no push;
- on a connection without TLS where plaintext logins are refused,
  ``LOGINDISABLED`` is advertised and no ``AUTH=`` mechanism is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ALWAYS_REMOVED_PREFIXES = (b"COMPRESS=",)
_TLS_ATOMS = frozenset({b"STARTTLS", b"LOGINDISABLED"})
_CAPTURABLE_SASL = frozenset({b"AUTH=PLAIN"})


@dataclass(frozen=True, slots=True)
class CapabilityPolicy:
    """What the proxy adds and removes; built once from the extensions and config."""

    add_pre_auth: tuple[bytes, ...] = ()
    add_post_auth: tuple[bytes, ...] = ()
    restrict_sasl: bool = False
    removed: frozenset[bytes] = field(default_factory=frozenset)


@dataclass(slots=True)
class ConnectionFacts:
    """The per-connection facts that change the advertised list."""

    authenticated: bool = False
    client_tls: bool = False
    starttls_offered: bool = False  # the proxy has a certificate for STARTTLS
    plaintext_auth_allowed: bool = True


def rewrite_atoms(atoms: list[bytes], policy: CapabilityPolicy, facts: ConnectionFacts) -> list[bytes]:
    out: list[bytes] = []
    seen: set[bytes] = set()
    login_disabled = not facts.client_tls and not facts.plaintext_auth_allowed
    for atom in atoms:
        upper = atom.upper()
        if upper in _TLS_ATOMS or upper.startswith(_ALWAYS_REMOVED_PREFIXES) or upper in policy.removed:
            continue
        if upper.startswith(b"AUTH="):
            if login_disabled or (policy.restrict_sasl and upper not in _CAPTURABLE_SASL):
                continue
        if upper in seen:
            continue
        seen.add(upper)
        out.append(atom)
    if not facts.authenticated:
        if facts.starttls_offered and not facts.client_tls:
            out.append(b"STARTTLS")
        if login_disabled:
            out.append(b"LOGINDISABLED")
    extra = policy.add_pre_auth + (policy.add_post_auth if facts.authenticated else ())
    for atom in extra:
        if atom.upper() not in seen:
            seen.add(atom.upper())
            out.append(atom)
    return out


def rewrite_capability_data(line: bytes, policy: CapabilityPolicy, facts: ConnectionFacts) -> bytes:
    """``* CAPABILITY a b c\\r\\n`` rewritten (the line end is kept)."""
    body, eol = _split_eol(line)
    prefix_len = len(b"* CAPABILITY")
    atoms = body[prefix_len:].split()
    return b"* CAPABILITY " + b" ".join(rewrite_atoms(atoms, policy, facts)) + eol


def rewrite_capability_code(
    line: bytes, code_start: int, code_end: int, policy: CapabilityPolicy, facts: ConnectionFacts
) -> bytes:
    """A status line whose ``[CAPABILITY ...]`` code spans ``code_start:code_end``."""
    atoms = line[code_start + 1 : code_end - 1].split()[1:]
    code = b"[CAPABILITY " + b" ".join(rewrite_atoms(atoms, policy, facts)) + b"]"
    return line[:code_start] + code + line[code_end:]


def is_capability_data(line: bytes) -> bool:
    return line[:13].upper() in (b"* CAPABILITY ", b"* CAPABILITY\r", b"* CAPABILITY\n")


def _split_eol(line: bytes) -> tuple[bytes, bytes]:
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""
