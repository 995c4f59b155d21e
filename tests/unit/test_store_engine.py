"""Store URLs: clear errors that never echo a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.engine import StoreError, make_engine


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://u:s3cret@db/apim", "store URL 'mysql://u:***@db/apim': only sqlite and postgresql are supported"),
    ("postgresql://u:s3:cret@db:notaport/apim",
     "store URL 'postgresql://u:***@db:notaport/apim' is not a SQLAlchemy URL"),
    ("nonsense", "store URL 'nonsense' is not a SQLAlchemy URL"),
])
def test_bad_store_urls_are_named_without_their_password(url: str, message: str) -> None:
    with pytest.raises(StoreError) as err:
        make_engine(url)
    assert str(err.value).startswith(message)
    assert "s3" not in str(err.value)


def test_only_the_databases_answers_are_translated(tmp_path: Path) -> None:
    """A bad bind value is a defect in our code, not the store's state: it keeps its own type."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import InterfaceError, ProgrammingError, StatementError

    from store.errors import StoreError

    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    with engine.connect() as conn:
        with pytest.raises((InterfaceError, ProgrammingError, StatementError)) as defect:
            conn.execute(text("SELECT :x"), {"x": object()})
        assert not isinstance(defect.value, StoreError)
        with pytest.raises(StoreError, match="no such table: nowhere"):
            conn.execute(text("SELECT * FROM nowhere"))
    engine.dispose()
