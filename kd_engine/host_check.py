"""Which Host headers the dashboard answers: loopback names and the address it was asked to serve.

A web page on another site can make a browser send requests to 127.0.0.1 under the page's own
name by re-pointing that name's DNS record at 127.0.0.1 (DNS rebinding). Such a request carries
the attacker's name in its Host header, so checking Host against the names the dashboard really
serves under refuses it. Two layers use this list:

- Streamlit's own `server.allowedHosts` option (set by `kdw dashboard` and in
  `.streamlit/config.toml`), which refuses the WebSocket every page runs over;
- `streamlit_app.py`, which stops a session whose Host is not in the list before any page runs
  (this also covers `streamlit run` started from a directory whose config lacks the option).
"""
from __future__ import annotations

import socket
from typing import Iterable
from urllib.parse import urlsplit

LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")


def allowed_hosts(address: str | None, extra: Iterable[str] = ()) -> list[str]:
    """Loopback names, the served address, and for a wildcard address this machine's names and
    addresses (the user chose to serve the network); `extra` adds names, e.g. of a proxy."""
    names = list(LOOPBACK)
    address = (address or "").strip().strip("[]")
    if address in WILDCARDS:
        if address:  # asked to serve every interface: the names this machine answers to
            host = socket.gethostname()
            names += [host, socket.getfqdn()]
            try:
                names += [info[4][0] for info in socket.getaddrinfo(host, None)]
            except OSError:
                pass
    else:
        names.append(address)
    names += [name for name in extra if name]
    seen: list[str] = []
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name and name not in seen:
            seen.append(name)
    return seen


def hostname_of(host_header: str | None) -> str | None:
    """The name in a Host header (without the port), or None when it is not a plain host[:port]."""
    if not host_header:
        return None
    try:
        parts = urlsplit(f"//{host_header}")
        _ = parts.port  # raises on a non-numeric port
    except ValueError:
        return None
    if parts.username or parts.password or parts.path or parts.query or parts.fragment or not parts.hostname:
        return None
    return parts.hostname.lower().rstrip(".")


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    name = hostname_of(host_header)
    allowed = [a.strip().lower().rstrip(".") for a in allowed]
    if "*" in allowed:  # the user opted out explicitly (server.allowedHosts = ["*"])
        return name is not None
    return name is not None and name in allowed
