"""The wire protocol on its own (no sockets): framing, validation, limits, and the light-import rule."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from project_paths import REPO_ROOT as REPO

from worker.client import protocol as P


def _header(frames: list) -> dict:
    return json.loads(bytes(frames[0]))


def test_round_trip_every_wire_dtype() -> None:
    arrays = {
        "pixels": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "valid": np.array([[True, False, True]]),
        "confidence": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
    }
    frames = P.encode({"op": "segment", "id": "x"}, arrays)
    header = _header(frames)
    assert header["v"] == P.PROTOCOL_VERSION
    assert [a["name"] for a in header["arrays"]] == ["pixels", "valid", "confidence"]
    message = P.decode([bytes(f) for f in frames])
    assert message.op == "segment"
    for name, array in arrays.items():
        np.testing.assert_array_equal(message.arrays[name], array)
        assert message.arrays[name].dtype == array.dtype


def test_big_endian_and_non_contiguous_arrays_go_out_little_endian_c_order() -> None:
    data = np.arange(12, dtype=">f4").reshape(3, 4).T  # big endian, Fortran order
    frames = P.encode({"op": "ping"}, {"a": data})
    assert bytes(frames[1]) == np.ascontiguousarray(data, dtype="<f4").tobytes()
    np.testing.assert_array_equal(P.decode(frames).arrays["a"], data)


def test_float64_and_pickle_like_dtypes_are_refused_on_both_sides() -> None:
    with pytest.raises(P.ProtocolError, match="cannot be sent"):
        P.encode({"op": "ping"}, {"a": np.zeros(3, np.float64)})
    with pytest.raises(P.ProtocolError, match="cannot be sent"):
        P.encode({"op": "ping"}, {"a": np.array([object()], dtype=object)})
    frames = [json.dumps({"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "object", "shape": [1]}]}).encode(),
              b"\0" * 8]
    with pytest.raises(P.ProtocolError, match="dtype 'object' not allowed") as info:
        P.decode(frames)
    assert info.value.code == "bad_array"


@pytest.mark.parametrize(
    ("frames", "code", "text"),
    [
        ([], "bad_header", "empty"),
        ([b"\xff\xfe"], "bad_header", "not UTF-8 JSON"),
        ([b"[1, 2]"], "bad_header", "JSON object"),
        ([b'{"v": 2, "op": "ping", "x": NaN}'], "bad_header", "NaN"),
        ([b'{"v": 3, "op": "ping"}'], "unsupported_version", "version 3 is not supported"),
        ([b'{"op": "ping"}'], "unsupported_version", "version None"),
        ([b'{"v": 2, "op": "launch_missiles"}'], "unknown_op", "unknown operation"),
        ([b'{"v": 2, "op": 3}'], "bad_header", "'op' must be a string"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [4]}]}'], "bad_array",
         "1 arrays but 0 array frames"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [4]}]}', b"abc"],
         "bad_array", "frame has 3 bytes"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [-4]}]}', b""],
         "bad_array", "non-negative integers"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1.5]}]}', b""],
         "bad_array", "non-negative integers"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [100000, 100000, 3]}]}', b""],
         "too_large", "limit is"),
        ([b'{"v": 2, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1]},'
          b' {"name": "a", "dtype": "uint8", "shape": [1]}]}', b"x", b"y"], "bad_array", "appears twice"),
        ([b'{"v": 2, "op": "ping", "arrays": "nope"}'], "bad_header", "must be a list"),
    ],
)
def test_malformed_messages_are_named(frames: list, code: str, text: str) -> None:
    with pytest.raises(P.ProtocolError, match=text) as info:
        P.decode(frames)
    assert info.value.code == code
    assert code in P.ERROR_CODES


def test_header_size_limit() -> None:
    big = json.dumps({"v": 2, "op": "ping", "pad": "x" * 70_000}).encode()
    with pytest.raises(P.ProtocolError, match="limit is 65536") as info:
        P.decode([big])
    assert info.value.code == "header_too_large"
    assert P.decode([big], reply=True).op == "ping"  # replies (plans) may be longer


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    with pytest.raises(P.ProtocolError):
        P.decode([b"[" * 60_000 + b"]" * 60_000])


def test_bool_bytes_other_than_0_1_are_normalised() -> None:
    frames = [json.dumps({"v": 2, "op": "ping", "arrays": [{"name": "m", "dtype": "bool", "shape": [3]}]}).encode(),
              bytes([0, 1, 7])]
    mask = P.decode(frames).arrays["m"]
    assert mask.dtype == np.bool_ and mask.tolist() == [False, True, True]


def test_check_helpers() -> None:
    assert P.check_window([0, 1, 5, 6], "src") == (0, 1, 5, 6)
    for bad in ([0, 0, 0, 5], [1, 2, 3], [0, 0, True, 4], "0,0,4,4", [-1, 0, 4, 4]):
        with pytest.raises(P.ProtocolError):
            P.check_window(bad, "src")
    assert P.check_int({"a": 3}, "a", 1, 5) == 3
    assert P.check_int({}, "a", 1, 5, default=2) == 2
    with pytest.raises(P.ProtocolError, match="outside"):
        P.check_int({"a": 9}, "a", 1, 5)
    with pytest.raises(P.ProtocolError, match="integer"):
        P.check_int({"a": True}, "a", 0, 5)


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///run/user/1000/factseg.ipc", True),
        ("inproc://x", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://192.168.1.10:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
        ("udp://127.0.0.1:5555", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert P.is_loopback_endpoint(endpoint) is loopback


def test_client_side_modules_import_no_torch() -> None:
    """QGIS's Python has no torch: the protocol, the client (and the package) must import without it."""
    code = (
        "import sys, worker, worker.client.protocol, worker.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'onnx', 'factseg_core'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# -- strict numbers and specific codes (issue 10) -----------------------------------------------------------


def _array_message(descriptor: dict, payload: bytes = b"") -> list[bytes]:
    return [json.dumps({"v": 2, "op": "ping", "arrays": [{"name": "a", **descriptor}]}).encode(), payload]


@pytest.mark.parametrize(
    ("frames", "code", "text"),
    [
        ([b'{"v": 2.0, "op": "ping"}'], "unsupported_version", "version 2.0 is not"),
        ([b'{"v": true, "op": "ping"}'], "unsupported_version", "version True is not"),
        ([b'{"v": "2", "op": "ping"}'], "unsupported_version", "version '2' is not"),
        ([b'{"v": 2, "op": "ping", "x": 1e400}'], "bad_header", "out of range"),
        ([b'{"v": 2, "op": "ping", "x": -1e400}'], "bad_header", "out of range"),
        (_array_message({"dtype": ["uint8"], "shape": [1]}, b"x"), "bad_array", "not allowed"),
        (_array_message({"dtype": {"a": 1}, "shape": [1]}, b"x"), "bad_array", "not allowed"),
        (_array_message({"dtype": "uint8", "shape": [0, 10**30]}), "bad_array", "dimension over"),
        (_array_message({"dtype": "float32", "shape": [0, 2**31 - 1, 2**31 - 1]}), "bad_array", "zero-size shape"),
        (_array_message({"dtype": "uint8", "shape": [True]}, b"x"), "bad_array", "non-negative integers"),
        (_array_message({"dtype": "uint8", "shape": [1.0]}, b"x"), "bad_array", "non-negative integers"),
    ],
)
def test_strict_numbers_and_malformed_arrays_get_specific_codes(frames: list, code: str, text: str) -> None:
    with pytest.raises(P.ProtocolError, match=text) as info:
        P.decode(frames)
    assert info.value.code == code and code != "internal"


def test_a_long_version_is_clipped_in_the_error() -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode([json.dumps({"v": "9" * 50_000, "op": "ping"}).encode()])
    assert info.value.code == "unsupported_version" and len(info.value.message) < 200


# -- typed requests: built by the client, parsed by the worker ---------------------------------------------


def _parse(request: P.Request, limits: P.Limits = P.DEFAULT_LIMITS) -> P.Request:
    return P.parse_request(P.decode([bytes(f) for f in request.frames()], limits), limits)


def test_every_request_round_trips_as_the_same_dataclass() -> None:
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    valid = np.ones((4, 5), bool)
    requests = [
        P.InfoRequest(id="i"),
        P.PingRequest(id="p", request="r"),
        P.PingRequest(),
        P.OpenRequest(height=10, width=20, patch=64, stride=32, chunk_size=64),
        P.OpenRequest(height=10, width=20),
        P.OpenRequest(id="o", height=10, width=20, stride=16),
        P.CancelRequest(request="r"),
    ]
    for request in requests:
        assert _parse(request) == request
    segment = P.SegmentRequest(id="s", request="r", index=0, image_size=(4, 5), src=(0, 0, 4, 5), out=(0, 0, 4, 5),
                               patch=64, stride=32, chunk_size=64, confidence=True, lease_s=2.5, pixels=pixels,
                               valid=valid)
    parsed = _parse(segment)
    assert isinstance(parsed, P.SegmentRequest)
    assert (parsed.request, parsed.index, parsed.image_size, parsed.src, parsed.out, parsed.lease_s) == (
        "r", 0, (4, 5), (0, 0, 4, 5), (0, 0, 4, 5), 2.5)
    np.testing.assert_array_equal(parsed.pixels, pixels)
    np.testing.assert_array_equal(parsed.valid, valid)
    assert parsed.opening == P.OpenRequest(height=4, width=5, patch=64, stride=32, chunk_size=64)


@pytest.mark.parametrize(
    ("header", "arrays", "code", "text"),
    [
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4]},
         {}, "bad_header", "image_size"),
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4, 4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4],
          "lease_s": True}, {"pixels": np.zeros((4, 4, 3), np.uint8)}, "bad_header", "lease_s"),
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4, 4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4]},
         {"pixels": np.zeros((4, 4, 4), np.uint8)}, "bad_array", "'pixels' must be uint8"),
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4, 4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4]},
         {"pixels": np.zeros((4, 4, 3), np.uint8), "valid": np.zeros((4, 3), bool)}, "bad_array", "'valid' must be"),
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4, 4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4]},
         {"pixels": np.zeros((4, 4, 3), np.uint8), "weights": np.zeros(1, np.uint8)}, "bad_array", "unexpected"),
        ({"op": "segment", "request": "r", "index": 0, "image_size": [4, 4], "src": [0, 0, 4, 4], "out": [0, 0, 4, 4],
          "tta": 1}, {"pixels": np.zeros((4, 4, 3), np.uint8)}, "bad_header", "'tta' must be true or false"),
        ({"op": "open", "height": 10}, {}, "bad_header", "'width' is required"),
        ({"op": "open", "height": 10, "width": 10**7}, {}, "too_large", "outside"),
        ({"op": "open", "height": 10, "width": 10, "patch": 8}, {}, "bad_header", "outside"),
        ({"op": "ping"}, {"a": np.zeros(1, np.uint8)}, "bad_array", "takes no arrays"),
        ({"op": "cancel"}, {}, "bad_header", "'request'"),
        ({"op": "info", "id": "x" * 200}, {}, "bad_header", "'id'"),
    ],
)
def test_request_fields_are_checked_on_parse(header: dict, arrays: dict, code: str, text: str) -> None:
    with pytest.raises(P.ProtocolError, match=text) as info:
        P.parse_request(P.decode(P.encode(header, arrays)))
    assert info.value.code == code


def test_open_requests_resolve_the_workers_defaults() -> None:
    assert P.OpenRequest(height=5, width=5).resolved(896, 512, 4096) == P.OpenRequest(
        height=5, width=5, patch=896, stride=512, chunk_size=4096)
    with pytest.raises(P.ProtocolError, match="stride"):
        P.OpenRequest(height=5, width=5, patch=64, stride=128).resolved(896, 512, 4096)
    with pytest.raises(P.ProtocolError, match="smaller than the stride"):
        P.OpenRequest(height=5, width=5, patch=64, stride=32, chunk_size=16).resolved(896, 512, 4096)


def test_plan_is_gone_in_version_2_and_open_is_the_only_handshake() -> None:
    assert P.PROTOCOL_VERSION == 2 and "plan" not in P.OPS and "open" in P.OPS
    with pytest.raises(P.ProtocolError, match="unknown operation 'plan'") as unknown:
        P.decode([json.dumps({"v": P.PROTOCOL_VERSION, "op": "plan", "height": 4, "width": 4}).encode()])
    assert unknown.value.code == "unknown_op"
    with pytest.raises(P.ProtocolError, match="version 1 is not supported; this side speaks version 2") as old:
        P.decode([b'{"v": 1, "op": "open", "height": 4, "width": 4}'])  # a version-1 peer is told, not half-served
    assert old.value.code == "unsupported_version"


def test_plan_replies_are_checked() -> None:
    good = [[0, 0, 0, 4, 4, 0, 0, 4, 4]]
    assert P.parse_plan(good, 4, 4) == [P.PlannedChunk(0, (0, 0, 4, 4), (0, 0, 4, 4))]
    for rows, text in (([[0, 0, 0, 4, 4, 0, 0, 4]], "9 integers"), ([[1, 0, 0, 4, 4, 0, 0, 4, 4]], "inconsistent"),
                       ([[0, 0, 0, 4, 2, 0, 0, 4, 2]], "covers 8"), ("x", "not a list"),
                       ([[0, 0, 0, 4, 4, 0, 0, 4, True]], "9 integers")):
        with pytest.raises(P.ProtocolError, match=text):
            P.parse_plan(rows, 4, 4)


# -- endpoints parsed as libzmq reads them (issue 10, item 1) -----------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://0.0.0.0:5555@127.0.0.1", "tcp://*:5555@127.0.0.1", "tcp://[::]:5555@127.0.0.1", "tcp://user@127.0.0.1:5",
     "tcp://127.0.0.1:5555;0.0.0.0", "tcp://0.0.0.0;127.0.0.1:5555", "tcp://127.0.0.1:5555/x", "tcp://127.0.0.1:99999",
     "tcp://127.0.0.1:5x", "tcp://127.0.0.1", "tcp://[::1:5555", "tcp://[zz::1]:5", "tcp://1*:5", "tcp:// 127.0.0.1:5",
     "localhost:5555", "udp://127.0.0.1:5", "tcp://", ""],
)
def test_endpoints_that_libzmq_would_read_differently_are_refused(endpoint: str) -> None:
    with pytest.raises(P.EndpointError):
        P.parse_endpoint(endpoint)
    assert not P.is_loopback_endpoint(endpoint)


def test_bound_endpoint_check_reads_the_real_address() -> None:
    from worker.server.security import WorkerStartError, check_bound_endpoint

    for real in ("tcp://127.0.0.1:5555", "tcp://127.9.0.1:1", "tcp://[::1]:5555", "ipc:///tmp/w.ipc"):
        check_bound_endpoint(real, curve=False)
    for real in ("tcp://0.0.0.0:5555", "tcp://[::]:5555", "tcp://192.168.1.4:5555", "tcp://[::ffff:10.0.0.1]:5",
                 "tcp://localhost:5555", "garbage"):
        with pytest.raises(WorkerStartError, match="refusing to serve"):
            check_bound_endpoint(real, curve=False)
        check_bound_endpoint(real, curve=True)  # with CURVE any address is fine


def test_the_client_refuses_unparsable_endpoints() -> None:
    from worker.client import WorkerClient

    with pytest.raises(ValueError, match="user info"):
        WorkerClient("tcp://0.0.0.0:5555@127.0.0.1")
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        WorkerClient("localhost:5555")


def test_limits_scale_with_the_frame_limit() -> None:
    limits = P.Limits.for_frame_limit(2**20)
    assert limits.max_frames == 1 + limits.max_arrays == 5
    assert limits.max_message_bytes == 3 * 2**19 + limits.max_header_bytes
    assert limits.max_total(reply=True) == limits.max_message_bytes + limits.max_reply_header_bytes
    assert P.DEFAULT_LIMITS.max_message_bytes >= 8192**2 * (3 + 1)  # pixels + mask of the largest chunk side
