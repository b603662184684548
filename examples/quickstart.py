"""Connect (embedded database unless DATABASE_URL is set), check health, run a query.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

import docstore


async def main() -> None:
    async with docstore.connect() as store:
        health = await store.health()
        print(store)
        print(f"PostgreSQL {health.server_version}, pgvector {health.pgvector_version}")
        print("documents:", await store.fetchval("select count(*) from documents"))


if __name__ == "__main__":
    asyncio.run(main())
