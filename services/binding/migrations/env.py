"""Alembic environment of the binding service: run through `Database.migrate`."""

from etax_platform.db import run_migrations
from services.binding.models import metadata

run_migrations(metadata)
