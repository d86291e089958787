"""The incident workflow of the operations center (pure: no I/O, no clock; callers pass ``now``).

An incident (alarms of one district close in time, :mod:`services.city.domain`) is worked as a case:

- **Assignment.** A supervisor (scope ``city:supervise``) assigns it to an operator, and may reassign it.
- **Comments.** Operators write what they see and do. Comments are operational notes and must never carry a
  citizen's personal data: :func:`check_free_text` refuses the obvious patterns (a 12-digit citizen id, a
  9-digit old identity card number, a Vietnamese phone number, an e-mail address) without echoing them.
- **Standard operating procedure.** Each incident type has an ordered checklist (data:
  ``incident_procedures.yaml``), chosen from the incident's alarms (:func:`choose_procedure`); operators tick
  steps off in order (a step waits for the mandatory steps before it; optional steps may be skipped).
- **Clearing.** Clearing an incident needs every mandatory step done, unless a supervisor overrides with a
  reason (:func:`check_clear`), which is audited.
- **Escalation.** An incident with alarms still unacknowledged past the times of its severity's ladder
  (``escalation`` in the same file) rises one level per rung passed, never down (:func:`escalation_due`).
- **Shelf expiry.** A shelved alarm whose shelf has run out comes back (:func:`shelf_expired`).

Errors are :class:`WorkflowError` with ``kind``: ``not_found`` (404), ``conflict`` (409), ``forbidden``
(403), ``invalid`` (422); the HTTP adapter maps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from services.city.domain import ACK_ROLES

PROCEDURES_FILE = Path(__file__).with_name("incident_procedures.yaml")
#: The scope of supervising the room (a supervisor's or administrator's): assign, clear over the procedure.
SUPERVISE_SCOPE = "city:supervise"
#: Roles that work incidents: comment, tick SOP steps, acknowledge, clear (those that act on alarms).
OPERATE_ROLES = ACK_ROLES
#: Who the system acts as in the audit trail.
ESCALATION_PRINCIPAL = "system:escalation"
SHELF_EXPIRY_PRINCIPAL = "system:shelf-expiry"
MAX_COMMENT = 2000
MAX_REASON = 500
SEVERITY_ORDER = ("critical", "major", "minor", "warning")

ErrorKind = Literal["not_found", "conflict", "forbidden", "invalid"]


class WorkflowError(ValueError):
    """An incident action refused: ``kind`` says why (not_found/conflict/forbidden/invalid)."""

    def __init__(self, kind: ErrorKind, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.details = details or []


# Procedures (data) ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    id: str
    text: Mapping[str, str]
    mandatory: bool = True


@dataclass(frozen=True)
class Procedure:
    id: str
    title: Mapping[str, str]
    steps: tuple[Step, ...]
    alarm_types: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def matches_type(self, alarm_type: str) -> bool:
        return any(
            alarm_type.startswith(p[:-1]) if p.endswith("*") else alarm_type == p for p in self.alarm_types
        )


@dataclass(frozen=True)
class EscalationPolicy:
    """Per severity, minutes unacknowledged after which the incident reaches level 1, 2, ... (ascending)."""

    ladders: Mapping[str, tuple[float, ...]]
    level_names: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True)
class Playbook:
    """The procedures (in file order; ``default`` last resort) and the escalation policy."""

    procedures: tuple[Procedure, ...]
    escalation: EscalationPolicy

    def get(self, procedure_id: str) -> Procedure | None:
        return next((p for p in self.procedures if p.id == procedure_id), None)


_ID = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def _names(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not {"vi", "en"} <= set(value):
        raise ValueError(f"{where}: needs a Vietnamese and an English text ({{vi: ..., en: ...}})")
    return {k: str(v) for k, v in value.items()}


def parse_playbook(data: Mapping[str, Any]) -> Playbook:
    """Validate the procedures file's content; a mistake names where it is (ValueError)."""
    procedures = []
    seen: set[str] = set()
    for i, p in enumerate(data.get("procedures") or []):
        pid = str(p.get("id", ""))
        if not _ID.match(pid) or pid in seen:
            raise ValueError(f"procedures[{i}]: id {pid!r} is missing, malformed or repeated")
        seen.add(pid)
        steps = []
        step_ids: set[str] = set()
        for j, s in enumerate(p.get("steps") or []):
            sid = str(s.get("id", ""))
            if not _ID.match(sid) or sid in step_ids:
                raise ValueError(
                    f"procedures[{i}] ({pid}).steps[{j}]: id {sid!r} missing, malformed or repeated"
                )
            step_ids.add(sid)
            steps.append(
                Step(sid, _names(s.get("text"), f"{pid}.{sid}.text"), bool(s.get("mandatory", True)))
            )
        if not steps:
            raise ValueError(f"procedures[{i}] ({pid}): a procedure has at least one step")
        match = p.get("match") or {}
        procedures.append(
            Procedure(
                pid,
                _names(p.get("title"), f"{pid}.title"),
                tuple(steps),
                tuple(str(t) for t in match.get("alarm_types") or ()),
                tuple(str(d) for d in match.get("domains") or ()),
            )
        )
    if "default" not in seen:
        raise ValueError("procedures: a procedure with id 'default' (for any other incident) is required")
    esc = data.get("escalation") or {}
    ladders: dict[str, tuple[float, ...]] = {}
    for sev, minutes in (esc.get("minutes") or {}).items():
        if sev not in SEVERITY_ORDER:
            raise ValueError(f"escalation.minutes: unknown severity {sev!r}")
        ladder = tuple(float(m) for m in minutes)
        if any(m <= 0 for m in ladder) or list(ladder) != sorted(set(ladder)):
            raise ValueError(f"escalation.minutes.{sev}: positive minutes in strictly ascending order")
        ladders[sev] = ladder
    names = tuple(_names(n, f"escalation.levels[{k}]") for k, n in enumerate(esc.get("levels") or ()))
    deepest = max((len(ladder) for ladder in ladders.values()), default=0)
    if len(names) < deepest:
        raise ValueError(f"escalation.levels: {deepest} levels are reachable, {len(names)} are named")
    return Playbook(tuple(procedures), EscalationPolicy(ladders, names))


def load_playbook(path: Path = PROCEDURES_FILE) -> Playbook:
    return parse_playbook(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def _severity_rank(severity: str | None) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def choose_procedure(alarms: Iterable[Mapping[str, Any]], playbook: Playbook) -> Procedure:
    """The procedure of an incident: its alarms taken worst severity first, then oldest first; the first whose
    alarm type a procedure lists picks it (procedures in file order); else the first whose domain one lists;
    else ``default``."""
    ordered = sorted(alarms, key=lambda a: (_severity_rank(a.get("severity")), a.get("raised_at") or ""))
    for a in ordered:
        for p in playbook.procedures:
            if p.matches_type(str(a.get("alarm_type", ""))):
                return p
    for a in ordered:
        for p in playbook.procedures:
            if a.get("domain") in p.domains:
                return p
    found = playbook.get("default")
    assert found is not None  # parse_playbook requires it
    return found


# The case --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepDone:
    step_id: str
    by: str
    at: datetime


@dataclass(frozen=True)
class Case:
    """What the workflow needs of one incident."""

    incident_id: str
    is_open: bool
    procedure: Procedure
    assignee: str | None = None
    escalation_level: int = 0
    done: tuple[StepDone, ...] = field(default_factory=tuple)
    district: str | None = None

    @property
    def done_ids(self) -> frozenset[str]:
        return frozenset(d.step_id for d in self.done)

    @property
    def missing_mandatory(self) -> list[str]:
        done = self.done_ids
        return [s.id for s in self.procedure.steps if s.mandatory and s.id not in done]


@dataclass(frozen=True)
class Action:
    """What an accepted action records in the audit trail (the caller writes it with ``target`` the
    incident id)."""

    action: str
    detail: dict[str, Any]


def _need_role(role: str, roles: frozenset[str], what: str) -> None:
    if role not in roles:
        raise WorkflowError(
            "forbidden", f"the role {role!r} may not {what}; roles allowed: {', '.join(sorted(roles))}"
        )


def _need_open(case: Case, what: str) -> None:
    if not case.is_open:
        raise WorkflowError(
            "conflict",
            f"the incident is closed; {what} needs an open incident",
            [{"incident_id": case.incident_id}],
        )


def _need_supervisor(supervisor: bool, what: str) -> None:
    if not supervisor:
        raise WorkflowError("forbidden", f"only a supervisor (scope {SUPERVISE_SCOPE!r}) may {what}")


def assign(case: Case, *, supervisor: bool, assignee: str, assignee_role: str | None) -> Action:
    """A supervisor assigns (or reassigns) an open incident to someone who may work it.

    ``supervisor``: the acting principal supervises (holds :data:`SUPERVISE_SCOPE`); ``assignee_role``: the
    assignee's role (``None`` when no such principal, or it is disabled)."""
    _need_supervisor(supervisor, "assign incidents")
    _need_open(case, "assigning")
    if assignee_role is None:
        raise WorkflowError(
            "invalid", "no such active principal", [{"field": "assignee", "reason": "unknown or disabled"}]
        )
    if assignee_role not in OPERATE_ROLES:
        raise WorkflowError(
            "invalid",
            f"a {assignee_role!r} cannot work incidents",
            [
                {
                    "field": "assignee",
                    "reason": f"role {assignee_role!r} is not one of {sorted(OPERATE_ROLES)}",
                }
            ],
        )
    if case.assignee == assignee:
        raise WorkflowError(
            "conflict", "the incident is already assigned to this principal", [{"assignee": assignee}]
        )
    if case.assignee is None:
        return Action("incident.assign", {"to": assignee})
    return Action("incident.reassign", {"from": case.assignee, "to": assignee})


def comment(case: Case, *, role: str, text: str) -> Action:
    """An operator's note on the incident (open or closed: notes of the review after it are welcome)."""
    _need_role(role, OPERATE_ROLES, "comment on incidents")
    body = text.strip()
    if not body:
        raise WorkflowError("invalid", "a comment needs text", [{"field": "text", "reason": "empty"}])
    if len(body) > MAX_COMMENT:
        raise WorkflowError(
            "invalid",
            f"a comment has at most {MAX_COMMENT} characters",
            [{"field": "text", "reason": "too long"}],
        )
    check_free_text(body, "text")
    return Action("incident.comment", {"length": len(body)})


def tick_step(case: Case, *, role: str, step_id: str) -> Action:
    """Mark one SOP step done. Steps go in order: a step waits for every mandatory step before it."""
    _need_role(role, OPERATE_ROLES, "work the procedure")
    _need_open(case, "ticking a step")
    step = case.procedure.step(step_id)
    if step is None:
        raise WorkflowError(
            "not_found",
            f"procedure {case.procedure.id!r} has no step {step_id!r}",
            [{"procedure": case.procedure.id, "step": step_id}],
        )
    if step_id in case.done_ids:
        raise WorkflowError("conflict", "this step is already done", [{"step": step_id}])
    done = case.done_ids
    before = case.procedure.steps[: case.procedure.steps.index(step)]
    waiting = [s.id for s in before if s.mandatory and s.id not in done]
    if waiting:
        raise WorkflowError(
            "conflict",
            f"mandatory steps before it are not done: {', '.join(waiting)}",
            [{"step": step_id, "waiting_for": waiting}],
        )
    return Action(
        "incident.sop_step",
        {"procedure": case.procedure.id, "step": step_id, "mandatory": step.mandatory},
    )


def check_clear(case: Case, *, role: str, supervisor: bool, override_reason: str | None) -> Action:
    """May this principal clear the incident now?

    Every mandatory step done → yes, for anyone who works incidents. Otherwise only a supervisor overriding with
    a reason (audited): without a reason 409 naming the missing steps; an override by a non-supervisor 403.
    """
    _need_role(role, OPERATE_ROLES, "clear incidents")
    missing = case.missing_mandatory
    reason = (override_reason or "").strip()
    if override_reason is not None:
        _need_supervisor(supervisor, "clear an incident over its procedure")
        if not reason:
            raise WorkflowError(
                "invalid", "an override needs a reason", [{"field": "reason", "reason": "empty"}]
            )
        if len(reason) > MAX_REASON:
            raise WorkflowError(
                "invalid",
                f"an override reason has at most {MAX_REASON} characters",
                [{"field": "reason", "reason": "too long"}],
            )
        check_free_text(reason, "reason")
    if not missing:
        return Action("incident.clear", {"procedure": case.procedure.id})
    if reason:
        return Action(
            "incident.clear_override",
            {"procedure": case.procedure.id, "missing_steps": missing, "reason": reason},
        )
    hint = (
        "clear it with POST /v1/incidents/{id}/clear-override and a reason"
        if supervisor
        else "a supervisor may clear it over the procedure, with a reason"
    )
    raise WorkflowError(
        "conflict",
        f"mandatory procedure steps are not done: {', '.join(missing)}; {hint}",
        [{"procedure": case.procedure.id, "missing_steps": missing}],
    )


# Escalation ------------------------------------------------------------------------------------------------
def escalation_target(
    severity: str | None, unacknowledged_since: datetime | None, now: datetime, policy: EscalationPolicy
) -> int:
    """How many rungs of its severity's ladder an incident unacknowledged since ``unacknowledged_since`` has
    passed at ``now`` (a rung is passed once the time is reached); 0 when acknowledged."""
    if unacknowledged_since is None or severity is None:
        return 0
    waited = now - unacknowledged_since
    return sum(1 for m in policy.ladders.get(severity, ()) if waited >= timedelta(minutes=m))


def escalation_due(
    current_level: int,
    severity: str | None,
    unacknowledged_since: datetime | None,
    now: datetime,
    policy: EscalationPolicy,
) -> Action | None:
    """The escalation to record now, or ``None``: levels only rise (an acknowledgement stops the climb; the
    level reached stays on the record)."""
    target = escalation_target(severity, unacknowledged_since, now, policy)
    if target <= current_level:
        return None
    assert unacknowledged_since is not None  # a target above 0 needs it
    return Action(
        "incident.escalate",
        {
            "from": current_level,
            "to": target,
            "severity": severity,
            "unacknowledged_since": unacknowledged_since.isoformat(),
            "at": now.isoformat(),
        },
    )


# Shelves ---------------------------------------------------------------------------------------------------
def shelf_expired(shelved_until: datetime | None, now: datetime) -> bool:
    """A shelf that has run out (ISA-18.2: shelving is time-limited; the alarm returns by itself)."""
    return shelved_until is not None and shelved_until <= now


# Personal data in free text ------------------------------------------------------------------------------
# A run of digits, single spaces, dots or hyphens between them ("0912 345 678", "001.095.001.234"), not glued to
# a word or an identifier ("K-123456789", "INC-HK-20260105T…" are asset and incident ids, not people).
_DIGIT_RUN = re.compile(r"(?<![\w\-./])\+?\d(?:[ .\-]?\d)*(?![\w/])")
_EMAIL = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")


def personal_data_kind(digits: str, international: bool) -> str | None:
    """What a run of digits (separators removed) looks like, if it looks like a person's.

    - a Vietnamese phone number, written nationally with its leading 0 or with the country code 84: 10 digits
      from 0[1-9] (mobiles since the 10-digit plan of Decision 798/QD-BTTTT, 2018: 03, 05, 07, 08, 09, and the
      012x/014x/016x and 0672 ranges; landlines as written before 2017, e.g. 04 3825 1234 in Hanoi), or
      11 digits from 01/02 (landlines with their 02x area code since 2017, e.g. 024 3825 1234 in Hanoi; mobiles
      of the old 11-digit plan). A superset of what libphonenumber holds valid: a comment needs no phone number
      at all, so a near miss is refused too;
    - 12 digits: a personal identification number, printed on the citizen identity card (Decree
      137/2015/ND-CP art. 7: twelve digits);
    - 9 digits: the number of an old identity card (CMND).
    """
    if digits.startswith("84") and (international or len(digits) in (11, 12)):
        if _national_phone("0" + digits[2:]):
            return "phone number"
    if _national_phone(digits):
        return "phone number"
    if len(digits) == 12:
        return "citizen id number (12 digits)"
    if len(digits) == 9:
        return "identity card number (9 digits)"
    return None


def _national_phone(digits: str) -> bool:
    if len(digits) == 10:
        return digits[0] == "0" and digits[1] != "0"
    return len(digits) == 11 and digits[0] == "0" and digits[1] in "12"


def find_personal_data(text: str) -> list[tuple[str, int]]:
    """(kind, character offset) of each obvious piece of a person's data in ``text``."""
    found: list[tuple[str, int]] = [("e-mail address", m.start()) for m in _EMAIL.finditer(text)]
    emails = [(m.start(), m.end()) for m in _EMAIL.finditer(text)]
    for m in _DIGIT_RUN.finditer(text):
        if any(a <= m.start() < b for a, b in emails):
            continue
        run = m.group()
        kind = personal_data_kind(re.sub(r"\D", "", run), run.startswith("+"))
        if kind is not None:
            found.append((kind, m.start()))
    return sorted(found, key=lambda f: f[1])


def check_free_text(text: str, field_name: str) -> None:
    """422 when ``text`` carries what looks like a citizen's personal data; the answer names the kind and
    where it starts, never the data itself (it would land in logs and browsers)."""
    found = find_personal_data(text)
    if found:
        raise WorkflowError(
            "invalid",
            "comments must not carry citizens' personal data (id numbers, phone numbers, e-mail addresses): "
            "refer to the case by its dossier or asset id instead",
            [
                {"field": field_name, "reason": f"looks like a {kind} at character {offset}"}
                for kind, offset in found
            ],
        )


def worst_severity(severities: Sequence[str]) -> str | None:
    return min(severities, key=_severity_rank) if severities else None
