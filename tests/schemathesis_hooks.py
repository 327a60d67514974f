"""Hooks for the schemathesis run of tests/tests/openapi.rs.

Meridian-Session is generated, not held fixed: each drawn token keeps its shape (how many
entries, a node named twice), but every entry names the node under test at a time it has
already reached (MERIDIAN_SESSION_NODE, MERIDIAN_SESSION_MAX, hex, from one of its answers), so
the token is one the node can cover: valid input in the sense the acceptance check means. A
token naming an unknown node (400 unknown_session_node) or a time not reached (503
session_unavailable after the wait) is refused by design; those are tested in
server/http/tests/api.rs.
"""

import os

import schemathesis

NODE = os.environ["MERIDIAN_SESSION_NODE"]
MAX = int(os.environ["MERIDIAN_SESSION_MAX"], 16)


def time_of(entry):
    """The entry's time, or 0 for one that does not parse (a negative case's value)."""
    _, _, time = entry.partition("=")
    try:
        return int(time, 16)
    except ValueError:
        return 0


def covered(token):
    entries = token.split(",")
    return ",".join(f"{NODE}={time_of(e) % (MAX + 1):x}" for e in entries)


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and headers.get("Meridian-Session"):
        headers["Meridian-Session"] = covered(headers["Meridian-Session"])
    return headers
