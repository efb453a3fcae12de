"""Alert snapshots for people outside the store: signed, expiring links (``links``) and the small HTTPS
endpoint that serves them (``server``, ``maskwatch snapshots serve``)."""
