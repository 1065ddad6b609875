import json

import pytest

from rayrec.serve.app import BadRequest, ServeConfig, parse_request

CFG = ServeConfig(max_events=5, max_body_bytes=2000)


def status_of(body: bytes) -> int:
    with pytest.raises(BadRequest) as e:
        parse_request(body, CFG)
    return e.value.status


def test_valid_request():
    events, k = parse_request(json.dumps({"events": [{"product_id": 1}], "k": 3}).encode(), CFG)
    assert k == 3 and events == [{"product_id": 1}]
    assert parse_request(b'{"events": [{"product_id": 1}]}', CFG)[1] == 10


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400), (b'{"k": 3}', 400), (b'[1, 2]', 400), (b'{"events": []}', 400),
    (b'{"events": {"a": 1}}', 400), (b'{"events": [{}], "k": "10"}', 400), (b'{"events": [{}], "k": 2.5}', 400),
    (b'{"events": [{}], "k": true}', 400), (b'{"events": [{}], "k": 0}', 400),
    (json.dumps({"events": [{}] * 6}).encode(), 413), (b" " * 2001, 413),
])
def test_bad_requests(body, status):
    assert status_of(body) == status
