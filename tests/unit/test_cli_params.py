"""``--param``/``--context`` values: JSON where they are JSON as the API reads it, else strings."""

from runledger.services.cli import _key_values


def test_values_are_json_where_the_api_would_read_json_and_strings_otherwise():
    got = _key_values(["n=1", "f=2.5", "s=hello", "q=\"quoted\"", "o={\"a\": [1]}", "eq=a=b", "nan=NaN", "inf=Infinity", "big=1e400"], "--param")
    assert got == {"n": 1, "f": 2.5, "s": "hello", "q": "quoted", "o": {"a": [1]}, "eq": "a=b",
                   "nan": "NaN", "inf": "Infinity", "big": "1e400"}
