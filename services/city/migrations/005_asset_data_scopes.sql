-- Console accounts saved before the asset pages' read scopes existed get them (services/city/roles.py grants
-- dossier:stats and kiosk:read to every console role; an account's scopes are stored when it is saved).
UPDATE platform.principals
SET scopes = ARRAY(SELECT DISTINCT s FROM unnest(scopes || ARRAY['dossier:stats', 'kiosk:read']) AS s ORDER BY s)
WHERE kind = 'operator'
  AND attributes->>'role' IN ('leader', 'operator', 'supervisor', 'administrator')
  AND NOT scopes @> ARRAY['dossier:stats', 'kiosk:read'];
