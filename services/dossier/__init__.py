"""The one-stop-shop dossier service: dossier state, lifecycle events and Decision 766 service indices."""
