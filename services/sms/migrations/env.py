from etax_platform.db import run_migrations
from services.sms.models import Base

run_migrations(Base.metadata)
