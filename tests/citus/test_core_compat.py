"""tests/test_compat.py run on the Citus cluster: its tests imported as they are, with
``database_url`` and ``store`` meaning the coordinator's distributed database
(tests/citus/conftest.py); ``test_citus.py`` checks what differs on Citus (bigint ids
beyond the legacy integer columns)."""

# ruff: noqa: F403
from __future__ import annotations

import pytest

from tests.test_compat import *

pytestmark = pytest.mark.citus
