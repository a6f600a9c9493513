"""Shared pytest fixtures (each room keeps its own in a module imported here)."""

from db_fixtures import db_url, postgres_schema_url, postgres_url, provenance_db  # noqa: F401
from prefect_fixtures import pipeline_env, prefect_harness  # noqa: F401
