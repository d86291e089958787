"""The city layer: merged city KPIs, alarms and incidents, their history, and the operations console."""
