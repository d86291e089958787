"""The meter service: AMR smart electricity meters (registry, readings, events, interruptions, energy KPIs)."""
