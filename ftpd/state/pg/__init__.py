"""The PostgreSQL state's parts; ``state.postgresql.PgState`` joins them. No imports here."""
