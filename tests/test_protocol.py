"""The wire protocol on its own (no sockets): framing, validation, limits, and the light-import rule."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.client import protocol as P

REPO = Path(__file__).resolve().parent.parent


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
    frames = [json.dumps({"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "object", "shape": [1]}]}).encode(),
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
        ([b'{"v": 1, "op": "ping", "x": NaN}'], "bad_header", "NaN"),
        ([b'{"v": 2, "op": "ping"}'], "unsupported_version", "version 2 is not supported"),
        ([b'{"op": "ping"}'], "unsupported_version", "version None"),
        ([b'{"v": 1, "op": "launch_missiles"}'], "unknown_op", "unknown operation"),
        ([b'{"v": 1, "op": 3}'], "bad_header", "'op' must be a string"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [4]}]}'], "bad_array",
         "1 arrays but 0 array frames"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [4]}]}', b"abc"],
         "bad_array", "frame has 3 bytes"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [-4]}]}', b""],
         "bad_array", "non-negative integers"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1.5]}]}', b""],
         "bad_array", "non-negative integers"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [100000, 100000, 3]}]}', b""],
         "too_large", "limit is"),
        ([b'{"v": 1, "op": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1]},'
          b' {"name": "a", "dtype": "uint8", "shape": [1]}]}', b"x", b"y"], "bad_array", "appears twice"),
        ([b'{"v": 1, "op": "ping", "arrays": "nope"}'], "bad_header", "must be a list"),
    ],
)
def test_malformed_messages_are_named(frames: list, code: str, text: str) -> None:
    with pytest.raises(P.ProtocolError, match=text) as info:
        P.decode(frames)
    assert info.value.code == code
    assert code in P.ERROR_CODES


def test_header_size_limit() -> None:
    big = json.dumps({"v": 1, "op": "ping", "pad": "x" * 70_000}).encode()
    with pytest.raises(P.ProtocolError, match="limit is 65536") as info:
        P.decode([big])
    assert info.value.code == "header_too_large"
    assert P.decode([big], reply=True).op == "ping"  # replies (plans) may be longer


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    with pytest.raises(P.ProtocolError):
        P.decode([b"[" * 60_000 + b"]" * 60_000])


def test_bool_bytes_other_than_0_1_are_normalised() -> None:
    frames = [json.dumps({"v": 1, "op": "ping", "arrays": [{"name": "m", "dtype": "bool", "shape": [3]}]}).encode(),
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
