-- The incident workflow (services/city/incidents.py, docs/console.md "Incident workflow"): assignment,
-- escalation, the procedure chosen, comments and SOP steps ticked. Who did what and when is in
-- platform.audit_log (target = the incident id); these tables hold the current state the console shows.
CREATE TABLE IF NOT EXISTS incident_workflow (
    incident_id      text PRIMARY KEY REFERENCES incidents(incident_id),
    assignee         text,
    assigned_by      text,
    assigned_at      timestamptz,
    procedure_id     text,
    escalation_level int NOT NULL DEFAULT 0 CHECK (escalation_level >= 0),
    escalated_at     timestamptz
);
CREATE INDEX IF NOT EXISTS incident_workflow_assignee ON incident_workflow (assignee);

CREATE TABLE IF NOT EXISTS incident_comments (
    id          bigserial PRIMARY KEY,
    incident_id text        NOT NULL REFERENCES incidents(incident_id),
    author      text        NOT NULL,
    at          timestamptz NOT NULL,
    body        text        NOT NULL CHECK (length(body) BETWEEN 1 AND 2000)
);
CREATE INDEX IF NOT EXISTS incident_comments_incident ON incident_comments (incident_id, id);

CREATE TABLE IF NOT EXISTS incident_steps (
    incident_id  text        NOT NULL REFERENCES incidents(incident_id),
    procedure_id text        NOT NULL,
    step_id      text        NOT NULL,
    done_by      text        NOT NULL,
    done_at      timestamptz NOT NULL,
    PRIMARY KEY (incident_id, step_id)
);

-- An incident's history reads the audit trail by target (the incident and its alarms).
CREATE INDEX IF NOT EXISTS audit_log_target ON platform.audit_log (target, id);
