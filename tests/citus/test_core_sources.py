"""tests/test_sources.py run on the Citus cluster: its tests imported as they are, with
``database_url`` and ``store`` meaning the coordinator's distributed database
(tests/citus/conftest.py)."""

# ruff: noqa: F403
from __future__ import annotations

import pytest

from tests.test_sources import *

pytestmark = pytest.mark.citus
