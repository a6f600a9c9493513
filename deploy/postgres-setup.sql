-- Roles and databases for a starnet installation: Prefect's server database and the
-- provenance database. Run once as a PostgreSQL superuser:
--
--   psql -U postgres -v prefect_password="$(openssl rand -base64 18)" \
--        -v starnet_password="$(openssl rand -base64 18)" -f deploy/postgres-setup.sql
--
-- and put the two passwords into /etc/starnet/starnet.env (see starnet.env.example).
-- Prefect's migrations need the pg_trgm extension; a non-superuser role cannot create
-- it, so it is created here, in the prefect database.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE prefect LOGIN PASSWORD %L', :'prefect_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prefect') \gexec
SELECT format('CREATE ROLE starnet LOGIN PASSWORD %L', :'starnet_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'starnet') \gexec

SELECT 'CREATE DATABASE prefect OWNER prefect'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'prefect') \gexec
SELECT 'CREATE DATABASE starnet OWNER starnet'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'starnet') \gexec

\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
