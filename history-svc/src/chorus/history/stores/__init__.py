"""Storage back ends of history-svc: `postgres` (asyncpg) and `sqlite` (aiosqlite), one `Store` interface."""
