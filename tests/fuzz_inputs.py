"""Hypothesis strategies for hostile input: mutated valid payloads and generated JSON-ish junk.

Used by tests/test_fuzz_*.py. A mutation starts from a VALID payload (so the parser gets deep into
its checks) and then flips, truncates, inserts or duplicates bytes; the structured strategies put
deep nesting, huge numbers, NaN/Infinity and odd unicode exactly where the schema expects a value.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Values that have broken JSON parsers and validators before.
NASTY_SCALARS: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    10**400,
    1e308,
    -1e308,
    5e-324,
    "",
    "\x00",
    "\ud7ff\ue000",
    "é" * 70,
    "‮override",
    "a" * 5000,
    "../../etc/passwd",
    "lineside/v1/devices/+/cmd",
    "2026-13-45T99:99:99Z",
    "1.0.0-" + "a" * 300,
    [],
    {},
]

RAW_NASTIES: list[bytes] = [
    b"",
    b"null",
    b"NaN",
    b"[NaN]",
    b'{"seq": Infinity}',
    b'{"seq": -Infinity}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"1" * 5000,
    b'{"seq": ' + b"9" * 5000 + b"}",
    b"\xff\xfe\x00\x00",
    b"\xef\xbb\xbf{}",
    '{"k": "\ud800"}'.encode("utf-8", "surrogatepass"),
    b'"' + b"\\u0000" * 1000 + b'"',
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from([s for s in NASTY_SCALARS if not isinstance(s, list | dict)]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid seed payload with 1-4 byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate", "splice"]))
        n = len(data)
        if n == 0:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, n - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=16),
                    st.sampled_from([b"NaN", b"Infinity", b"[", b"{", b'"', b"\\", b"\x00", b"1e999"]),
                )
            )
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "duplicate":
            j = draw(st.integers(i, n))
            data[j:j] = data[i:j]
        else:  # splice a JSON value over a span
            j = draw(st.integers(i, min(n, i + 16)))
            data[i:j] = json.dumps(draw(json_values), default=str).encode()
    return bytes(data)


@st.composite
def field_replaced(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> bytes:
    """A valid seed object with one (possibly nested) field replaced, removed or added."""
    obj = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    node = obj
    # Walk into a nested object sometimes, so the inner schemas get hit too.
    while True:
        dict_children = [k for k, v in node.items() if isinstance(v, dict) and v]
        if not dict_children or not draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(sorted(dict_children)))]
    keys = sorted(node)
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace" and keys:
        node[draw(st.sampled_from(keys))] = draw(st.one_of(json_values, st.sampled_from(NASTY_SCALARS)))
    elif action == "remove" and keys:
        del node[draw(st.sampled_from(keys))]
    else:
        node[draw(st.text(max_size=12))] = draw(json_values)
    return json.dumps(obj, default=str).encode()


def deep(depth: int, kind: str = "list") -> bytes:
    """``[[[...]]]`` or ``{"a":{"a":...}}`` ``depth`` levels deep."""
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"0" + b"}" * depth
