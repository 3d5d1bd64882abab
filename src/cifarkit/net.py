"""The address a server listens on (`cifarkit app --host --port`), tried before anything loads: torch-free, and
shared by the command line's early check and the app itself."""

from __future__ import annotations

import errno
import socket

from cifarkit.errors import CifarkitError, one_line


def check_address(host: str, port: int) -> None:
    """The app's --host and --port, tried by binding a socket before anything loads: a busy port or an address this
    machine does not have is one line in the command line's words."""
    if not 0 < port < 65536:
        raise CifarkitError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) and e.strerror else one_line(e)
        raise CifarkitError(f"--host {host} is not a name or address this machine can resolve ({reason}); use "
                            "127.0.0.1, or 0.0.0.0 to serve every network") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CifarkitError(f"port {port} on {host} is in use by another program: choose another --port") \
                    from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise CifarkitError(f"--host {host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 to "
                                    "serve every network") from None
            if e.errno == errno.EACCES:
                raise CifarkitError(f"port {port} needs administrator rights here: choose a --port above 1023") \
                    from None
            raise CifarkitError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
