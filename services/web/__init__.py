"""The bureau's web login page and account center (backend-for-frontend, docs/web.md)."""
