"""Public-service kiosks: the fleet registry, telemetry and sessions, availability KPIs and alarms."""
