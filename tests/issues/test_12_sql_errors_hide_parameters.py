"""Issue 12 (low): SQL errors never carry bound parameters (ciphertexts reached the log that way)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

pytestmark = pytest.mark.anyio


async def test_a_failing_statement_does_not_show_its_parameters(app) -> None:  # noqa: ANN001
    marker = "vault:v1:SECRET-CIPHERTEXT-MARKER"
    with pytest.raises(DBAPIError) as caught:
        async with app.unit_of_work() as uow:
            await uow.session.execute(text("INSERT INTO no_such_table (x) VALUES (:x)"), {"x": marker})
    assert marker not in str(caught.value)
    assert "hidden due to hide_parameters" in str(caught.value)
