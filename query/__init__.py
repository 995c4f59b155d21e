"""Python query API over the analytics store, returning pandas DataFrames (see query/usage.py).

Kept free of imports so that a command which only needs ``query.names``
(the CLI's help) does not load pandas.
"""
