//! PostgreSQL binary result values → PostgreSQL text format (being written).
