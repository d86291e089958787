-- Dossier codes are scoped per agency (issue #40, SG12): two agencies may use the same code, so a dossier is
-- identified by (agency_code, code) and its history references that pair. Existing rows keep their agency.
ALTER TABLE dossier_history DROP CONSTRAINT IF EXISTS dossier_history_dossier_code_fkey;
ALTER TABLE dossier_history ADD COLUMN IF NOT EXISTS agency_code text;
UPDATE dossier_history h SET agency_code = d.agency_code FROM dossiers d
    WHERE h.agency_code IS NULL AND d.code = h.dossier_code;
ALTER TABLE dossier_history ALTER COLUMN agency_code SET NOT NULL;

ALTER TABLE dossiers DROP CONSTRAINT IF EXISTS dossiers_pkey;
ALTER TABLE dossiers ADD CONSTRAINT dossiers_pkey PRIMARY KEY (agency_code, code);
-- reads by code alone (an admin naming no agency) and the watcher's ordering
CREATE INDEX IF NOT EXISTS dossiers_code ON dossiers (code);

ALTER TABLE dossier_history ADD CONSTRAINT dossier_history_dossier_fkey
    FOREIGN KEY (agency_code, dossier_code) REFERENCES dossiers (agency_code, code);
DROP INDEX IF EXISTS dossier_history_code;
CREATE INDEX IF NOT EXISTS dossier_history_dossier ON dossier_history (agency_code, dossier_code, id);
