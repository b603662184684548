"""tests/test_migrate.py run on the Citus cluster (the Migrator from a single-node legacy
database into the coordinator's distributed database): all of its tests imported as they are,
with ``database_url`` meaning the cluster (tests/citus/conftest.py)."""

# ruff: noqa: F403
from __future__ import annotations

import pytest

from tests.test_migrate import *

pytestmark = pytest.mark.citus
