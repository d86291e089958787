"""Console roles and the scopes each one holds (docs/console.md, "Sign-in and roles"). Pure data.

A signed-in person is a principal of kind ``operator`` whose ``attributes.role`` is one of :data:`ROLES`; its
scopes are the role's, stored on the principal, so a route's ``require_scope`` decides for sessions and API
keys alike. The role checks of the alarm actions (``ACK_ROLES``, ``CLEAR_ROLES`` in domain.py) apply on top.
"""

from __future__ import annotations

ROLES = ("leader", "supervisor", "operator", "administrator")

#: What each role may do. ``city:supervise`` is the scope of supervision (assigning, escalating; the incident
#: workflow), ``city:admin`` the scope of managing console accounts. ``traffic:read`` lets the intersection pages
#: fetch the traffic service's registry and measures with the operator's own session (no personal data there);
#: ``dossier:stats`` the dossier service's aggregates (agency list, Decision 766 scorecards) for the agency pages,
#: ``kiosk:read`` the kiosk service's per-kiosk status (no secrets) for the kiosk pages. No console role reads
#: dossiers (``dossier:read``: they hold applicants' personal data) or the full kiosk registry (``kiosk:admin``).
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    # watches the city: every view, the archive extracts; no alarm actions
    "leader": ("city:read", "archive:read", "traffic:read", "dossier:stats", "kiosk:read"),
    # works the alarms: acknowledge, shelve, clear
    "operator": ("city:read", "city:operate", "traffic:read", "dossier:stats", "kiosk:read"),
    # an operator who also supervises the room and extracts data
    "supervisor": (
        "city:read",
        "city:operate",
        "city:supervise",
        "archive:read",
        "traffic:read",
        "dossier:stats",
        "kiosk:read",
    ),
    # runs the console: all of the above, accounts and the platform's own streams
    "administrator": (
        "city:read",
        "city:operate",
        "city:supervise",
        "city:admin",
        "archive:read",
        "platform:read",
        "traffic:read",
        "dossier:stats",
        "kiosk:read",
    ),
}

ADMIN_SCOPE = "city:admin"
