"""tests/test_compat.py run on the Citus cluster: its tests imported as they are, with
``database_url`` and ``store`` meaning the coordinator's distributed database
(tests/citus/conftest.py). The one test that does not hold on Citus is removed below, with
the reason; ``test_citus.py`` checks what does hold instead."""

# ruff: noqa: F403, F821
from __future__ import annotations

import pytest

from tests.test_compat import *

pytestmark = pytest.mark.citus

# Writes through the compat views are refused on Citus too, but with Citus's "could not find
# valid entry for shard 0" (it plans the DML on the view before the INSTEAD OF trigger runs),
# not docstore's "write through LegacyDatabase" message this test matches.
del test_writes_through_the_views_point_to_the_facade
