-- Runs once, in $POSTGRES_DB, when the container initialises its cluster.
CREATE EXTENSION IF NOT EXISTS pg_cron;
