# moto_server with IAM enforcement switched on by a flag file, and with the
# SigV4 canonical query string that AWS computes.
#
# Run by lifeboat_testkit::MotoServer::start_with_iam as
#   python3 iam_server.py FLAG_FILE -H 127.0.0.1 -p PORT
#
# 1. Until FLAG_FILE exists every request is allowed (the test creates the
#    bucket and its IAM users with any credentials); from then on each
#    request is authenticated and checked against the user's policies.
#    moto's own switch, INITIAL_NO_AUTH_ACTION_COUNT, counts requests, which
#    makes a test depend on how many calls its setup happens to make.
# 2. moto (5.2.1, and getmoto/moto issue 5948, open) rebuilds the signed
#    request from the URL werkzeug has already percent-DECODED, and its
#    signer (botocore's, for a URL) takes the query as it finds it. So any
#    query value holding a character SigV4 encodes, such as the `/` of
#    `prefix=repo/keys/` in every ListObjectsV2, is signed by the client as
#    `repo%2Fkeys%2F` (AWS's rule: encode all but A-Z a-z 0-9 - _ . ~) and
#    checked by moto as `repo/keys/`: SignatureDoesNotMatch for boto3 and
#    for OpenDAL alike, while AWS accepts both. The patch re-encodes each
#    query name and value by that rule before moto signs.
import os
import sys
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from moto import settings
from moto.core import authorization
from moto.iam import access_control

FLAG = sys.argv.pop(1)
settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")

_authenticate = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action


def authenticate_once_flagged(self, iam_request_cls, resource="*"):
    if os.path.exists(FLAG):
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    return _authenticate(self, iam_request_cls, resource)


authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = (
    authenticate_once_flagged
)

_create_aws_request = access_control.IAMRequestBase._create_aws_request


def sigv4_canonical_query(self):
    request = _create_aws_request(self)
    parts = urlsplit(request.url)
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            name, _, value = pair.partition("=")
            pairs.append(
                quote(unquote(name), safe="-_.~") + "=" + quote(unquote(value), safe="-_.~")
            )
        request.url = urlunsplit(parts._replace(query="&".join(pairs)))
    return request


access_control.IAMRequestBase._create_aws_request = sigv4_canonical_query

from moto.server import main  # noqa: E402

main(sys.argv[1:])
