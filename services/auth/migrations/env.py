from etax_platform.db import run_migrations
from services.auth.models import metadata

run_migrations(metadata)
