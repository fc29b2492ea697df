"""The dashboard for people: sign-in sessions, the pages and their files (``static/``)."""
