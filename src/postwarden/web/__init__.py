"""The HTTP side: the JSON API (and, later, the admin UI and tracking endpoints)."""
