"""Store URLs: clear errors that never echo a password."""

from __future__ import annotations

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
