"""Every ``Rejection.code`` has a row in the one rejection table (HTTP status, GraphQL code)."""

from typing import get_args

from runledger.messages.commands import Rejection
from runledger.services.ingress.errors import REJECTIONS, graphql_code, http_status


def test_every_rejection_code_has_an_entry():
    codes = set(get_args(Rejection.model_fields["code"].annotation))
    assert codes, "Rejection.code is no longer a Literal"
    assert codes == set(REJECTIONS)
    for code in codes:
        assert 400 <= http_status(code) < 500
        assert graphql_code(code)


def test_a_stale_version_is_a_version_locking_error():
    assert (http_status("VERSION_MISMATCH"), graphql_code("VERSION_MISMATCH")) == (409, "VERSION_LOCKING_ERROR")
