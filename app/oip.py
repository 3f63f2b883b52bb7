"""The Open Inference Protocol v2 (KServe, Triton) on the wire: bodies, tensors and the binary extension.

Pure encoding and decoding, no HTTP framework: the router in app/routes/v2.py feeds it the body
bytes and one header, and sends back what it returns. The binary tensor data extension (Triton's)
puts a JSON header first, its length in ``Inference-Header-Content-Length``, then the raw tensors
in the order of the inputs (or outputs) that carry ``parameters.binary_data_size``; numbers are
little-endian and row-major, and each BYTES element is prefixed by its length as a 4-byte
little-endian unsigned integer.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
EXTENSIONS = ("binary_tensor_data",)

# Explicitly little-endian: the extension's byte order, whatever the machine's.
NUMERIC_DTYPES: dict[str, np.dtype] = {name: np.dtype(code) for name, code in {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.items()}
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")
# Past this many digits a length is not a length (and int() of 4,300 digits raises).
MAX_LENGTH_DIGITS = 20
# A JSON request's commas outside its tensors' data: names, parameters, outputs.
STRUCTURE_VALUES = 1_000
# The request compressions Triton takes (tritonclient's request_compression_algorithm); HTTP's deflate is
# zlib's format. Their window bits for zlib.
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MAX_GZIP_MEMBERS = 64


class ProtocolError(Exception):
    """A request the protocol cannot serve; ``message`` is what the client reads under "error"."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


# --- JSON bodies -------------------------------------------------------------------------------

class RequestInput(BaseModel):
    name: str
    shape: list[StrictInt] = Field(description="the tensor's shape; row-major; -1 is not allowed in a request")
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="binary_data_size: bytes of this tensor in the binary section")
    data: Any = Field(None, description="the elements, flat or nested lists, row-major; absent when binary")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="binary_data: true to receive this output in binary form")


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="binary_data_output: true to receive every output in binary form")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="the outputs wanted; default: all of them")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ProtocolErrorResponse(BaseModel):
    """The protocol's one error shape: a message, no code."""

    model_config = ConfigDict(json_schema_extra={"example": {"error": "unknown model 'x'"}})
    error: str


# --- tensors -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputTensor:
    """One request input, not decoded yet: its JSON ``data`` or its slice of the binary section."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    raw: memoryview | None = None

    @property
    def is_binary(self) -> bool:
        return self.raw is not None

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)

    def as_array(self) -> np.ndarray:
        """The numeric tensor, shaped; a ProtocolError unless data and shape agree."""
        dtype = NUMERIC_DTYPES.get(self.datatype)
        if dtype is None:
            raise ProtocolError(f"input {self.name!r}: {self.datatype} is not a numeric datatype")
        if self.raw is not None:
            expected = self.element_count * dtype.itemsize
            if len(self.raw) != expected:
                raise ProtocolError(f"input {self.name!r}: shape {list(self.shape)} of {self.datatype} takes "
                                    f"{expected} bytes, but its binary_data_size is {len(self.raw)}")
            array = np.frombuffer(self.raw, dtype).reshape(self.shape)
        else:
            array = self._json_array(dtype)
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError(f"input {self.name!r}: data holds NaN or an infinity; send finite numbers")
        return array

    def _json_array(self, dtype: np.dtype) -> np.ndarray:
        # Object first: the leaves stay references. np.asarray sized a string array by the longest string for
        # every element, so 300 strings, one of 500 KB, took 572 MB before the 400.
        values = np.array(self.data, dtype=object)
        leaf_types = set(map(type, values.reshape(-1)))  # .flat stops at 32 dimensions
        allowed: set[type] = {bool} if dtype.kind == "b" else {int, float}
        if not leaf_types <= allowed:
            if list in leaf_types:  # ragged nesting: numpy stops at the lists of unequal length
                raise ProtocolError(f"input {self.name!r}: data is not a regular nested list of numbers")
            kind = "booleans" if dtype.kind == "b" else "numbers"
            raise ProtocolError(f"input {self.name!r}: {self.datatype} data must be {kind} (in JSON), got "
                                f"{_json_kind(leaf_types)}")
        if values.size != self.element_count:
            raise ProtocolError(f"input {self.name!r}: shape {list(self.shape)} holds {self.element_count} "
                                f"elements, but data holds {values.size}")
        try:
            return values.astype(dtype).reshape(self.shape)
        except (OverflowError, ValueError):
            raise ProtocolError(f"input {self.name!r}: data holds numbers outside {self.datatype}'s range") from None

    def as_bytes(self) -> list[bytes]:
        """The BYTES elements, flattened row-major."""
        if self.datatype != BYTES:
            raise ProtocolError(f"input {self.name!r}: expected BYTES, got {self.datatype}")
        if self.raw is not None:
            elements = unpack_bytes(self.raw, self.element_count, self.name)
        else:
            elements = [text.encode() for text in _flat_strings(self.data, self.name, self.element_count)]
        if len(elements) != self.element_count:
            held = f"more than {self.element_count}" if len(elements) > self.element_count else str(len(elements))
            raise ProtocolError(f"input {self.name!r}: shape {list(self.shape)} holds {self.element_count} "
                                f"elements, but data holds {held}")
        return elements


def _json_kind(leaf_types: set[type]) -> str:
    if len(leaf_types) > 1:
        return "mixed or non-numeric values"
    return {str: "strings", bool: "booleans", int: "numbers", float: "numbers"}.get(next(iter(leaf_types)),
                                                                                  "mixed or non-numeric values")


def _flat_strings(data: Any, name: str, limit: int) -> list[str]:
    """The strings of nested lists, row-major; one past ``limit`` at most (the caller reports the count)."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if len(found) > limit:
            return
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)
        else:
            raise ProtocolError(f"input {name!r}: BYTES data must be strings in JSON, got {type(item).__name__}")

    walk(data)
    return found


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray | Sequence[bytes]  # BYTES: a flat sequence, ``shape`` says how it is laid out
    shape: tuple[int, ...]

    @classmethod
    def of_array(cls, name: str, datatype: str, array: np.ndarray) -> OutputTensor:
        return cls(name=name, datatype=datatype, data=array, shape=tuple(array.shape))

    def to_binary(self) -> bytes:
        if self.datatype == BYTES:
            return pack_bytes(self.data)  # type: ignore[arg-type]
        return np.ascontiguousarray(self.data, NUMERIC_DTYPES[self.datatype]).tobytes()

    def to_json(self) -> list[Any]:
        if self.datatype == BYTES:
            # JSON has no bytes: the protocol sends them as strings, so they must be text.
            return [element.decode() for element in self.data]
        return np.asarray(self.data).reshape(-1).tolist()


# --- the binary extension ----------------------------------------------------------------------

def parse_header_length(value: str | None, body_length: int) -> int | None:
    """``Inference-Header-Content-Length`` as a length within the body; None when absent (all JSON)."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} is negative ({text}); it must be the byte length of the JSON header")
    if not (text.isascii() and text.isdigit()):
        raise ProtocolError(f"{HEADER_LENGTH} must be a byte count, got {value[:40]!r}")
    text = text.lstrip("0") or "0"
    if len(text) > MAX_LENGTH_DIGITS:
        raise ProtocolError(f"{HEADER_LENGTH} has {len(text)} digits; it must be the byte length of the JSON header")
    length = int(text)
    if length > body_length:
        raise ProtocolError(f"{HEADER_LENGTH} says the JSON header is {length} bytes, but the whole body is "
                            f"{body_length}: the body is truncated or the header is wrong")
    return length


def unpack_bytes(buffer: memoryview | bytes, limit: int, name: str = "") -> list[bytes]:
    """Length-prefixed BYTES elements; stops past ``limit`` elements so that a body of empty
    elements cannot make the server count millions of them."""
    view = memoryview(buffer)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(elements) >= limit:
            raise ProtocolError(f"input {name!r}: its binary data holds more than the {limit} elements of its shape")
        if offset + _LENGTH.size > len(view):
            raise ProtocolError(f"input {name!r}: truncated BYTES element {len(elements)}: its 4-byte length "
                                f"prefix is cut off at byte {offset} of {len(view)}")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + size > len(view):
            raise ProtocolError(f"input {name!r}: BYTES element {len(elements)} declares {size} bytes, but only "
                                f"{len(view) - offset} remain in its binary data")
        elements.append(bytes(view[offset:offset + size]))
        offset += size
    return elements


def pack_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def _binary_size(parameters: dict[str, Any], name: str) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a byte count, got {size!r}")
    return size


def _validation_message(exc: ValidationError) -> str:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
    return f"invalid inference request: {details}"


def nested_values(shape: Sequence[int]) -> int:
    """The JSON values of a tensor of ``shape`` written as nested lists: its elements and its lists."""
    values, rows = 0, 1
    for dim in shape:
        values += rows  # a list for each row of the level above
        rows *= dim
    return values + rows


def _values(text: bytes) -> int:
    # A comma before each value of a list or an object but its first, a bracket for each list and object: a
    # bound on the values that parses nothing (each count is one pass in C).
    return text.count(b",") + text.count(b"[") + text.count(b"{")


def _values_outside_strings(text: bytes) -> int:
    """``_values`` of what lies outside the JSON text's strings. Escaped backslashes and quotes go first;
    then a byte is inside a string where an odd number of quotes comes before it. Vectorised, linear: a
    string's characters would take a Python loop each."""
    unescaped = np.frombuffer(text.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    outside = (np.cumsum(unescaped == ord('"'), dtype=np.uint8) & 1) == 0  # parity survives the wrap at 256
    structure = unescaped == ord(",")
    structure |= unescaped == ord("[")
    structure |= unescaped == ord("{")
    return int(np.count_nonzero(structure & outside))


def content_encoding(header: str | None) -> str:
    """The request's Content-Encoding, refused with a 415 unless it is one this side inflates."""
    encoding = (header or "identity").strip().lower()
    if encoding != "identity" and encoding not in CONTENT_ENCODINGS:
        raise ProtocolError(f"Content-Encoding {encoding} is not supported: send the body uncompressed, or with "
                            f"{' or '.join(CONTENT_ENCODINGS)}", 415, "unsupported_media_type")
    return encoding


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body as it was before its Content-Encoding, at most ``max_bytes`` of it: a few kilobytes of gzip can
    inflate to gigabytes, so the upload limit bounds what it inflates to as well. gzip may hold several members
    one after the other (RFC 1952), and zeros after the last; at most MAX_GZIP_MEMBERS."""
    if encoding == "identity":
        return body
    pieces: list[bytes] = []
    size, rest = 0, body
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(CONTENT_ENCODINGS[encoding])
        try:
            piece = inflater.decompress(rest, max_bytes + 1 - size)
        except zlib.error as exc:
            raise ProtocolError(f"the {encoding} body could not be inflated ({exc}); send it whole, or uncompressed"
                                ) from None
        pieces.append(piece)
        size += len(piece)
        if size > max_bytes:
            raise ProtocolError(f"the {encoding} body inflates to more than {max_bytes:,} bytes, the upload limit; "
                                "send less per request", 413, "upload_too_large")
        if not inflater.eof:
            raise ProtocolError(f"the {encoding} body is cut short; send it whole")
        rest = inflater.unused_data
        if encoding == "deflate" or not rest.strip(b"\0"):
            break
    if rest and (encoding == "deflate" or rest.strip(b"\0")):
        more = "" if encoding == "deflate" else f", or more than {MAX_GZIP_MEMBERS} members"
        raise ProtocolError(f"the {encoding} body has bytes after its end{more}; send it whole, in one")
    return b"".join(pieces)


def parse_request(body: bytes, header_length: str | None,
                  max_values: int) -> tuple[InferenceRequest, list[InputTensor]]:
    """The request and its inputs, each with its own slice of the binary section, which the inputs'
    binary_data_size must cover exactly: a byte short or left over means client and server disagree.

    A JSON header with more values than ``max_values`` (what the largest request the model takes holds, as
    nested lists: ``nested_values``) and STRUCTURE_VALUES is refused before it is parsed: each JSON value
    becomes a Python object, so a body of ``{}``, three bytes each, would take 25 times its size in memory,
    and one of ``[[[[[0]]]]]`` 80 times."""
    length = parse_header_length(header_length, len(body))
    view = memoryview(body)
    header, binary = (body, view[:0]) if length is None else (bytes(view[:length]), view[length:])
    values = _values(header)
    if values > max_values + STRUCTURE_VALUES:
        values = _values_outside_strings(header)  # an id or a parameter may hold any number of commas
    if values > max_values + STRUCTURE_VALUES:
        raise ProtocolError(f"the JSON request holds about {values:,} values (numbers, strings, lists), more than "
                            f"the {max_values:,} of the largest request this model takes; send fewer, or send tensors "
                            "as binary data")
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise ProtocolError(_validation_message(exc)) from None
    inputs, offset = [], 0
    for given in request.inputs:
        if any(dim < 0 for dim in given.shape):
            raise ProtocolError(f"input {given.name!r}: shape {given.shape} has a negative dimension")
        size = _binary_size(given.parameters, given.name)
        if size is None:
            if given.data is None:
                raise ProtocolError(f"input {given.name!r} has no data: send 'data' or, with the binary extension, "
                                    "parameters.binary_data_size")
            inputs.append(InputTensor(given.name, given.datatype, tuple(given.shape), data=given.data))
            continue
        if given.data is not None:
            raise ProtocolError(f"input {given.name!r} has both 'data' and binary_data_size; send one")
        if offset + size > len(binary):
            raise ProtocolError(f"input {given.name!r} declares {size} bytes of binary data at offset {offset}, but "
                                f"the binary section after the JSON header holds only {len(binary)}")
        inputs.append(InputTensor(given.name, given.datatype, tuple(given.shape), raw=binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"the binary section after the JSON header holds {len(binary)} bytes, but the inputs' "
                            f"binary_data_size add up to {offset}")
    names = [tensor.name for tensor in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"an input is given twice: {names}")
    return request, inputs


def _flag(parameters: dict[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def requested_outputs(request: InferenceRequest, available: Sequence[str]) -> dict[str, bool]:
    """The outputs to send, in the order asked for, each with whether it goes in binary form."""
    default = _flag(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        return dict.fromkeys(available, default)
    wanted: dict[str, bool] = {}
    for output in request.outputs:
        if output.name not in available:
            raise ProtocolError(f"unknown output {output.name!r}; this model's outputs are {', '.join(available)}")
        if "classification" in output.parameters:
            raise ProtocolError("the classification extension is not supported: ask for the probabilities "
                                "(or the labels of an image model) instead")
        wanted[output.name] = _flag(output.parameters, "binary_data", default)
    return wanted


def encode_response(model_name: str, model_version: str | None, request_id: str | None,
                    outputs: Sequence[OutputTensor], binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when some output is binary (for the
    ``Inference-Header-Content-Length`` header; None means the body is all JSON)."""
    described, chunks = [], []
    for tensor in outputs:
        entry = ResponseOutput.model_construct(name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype)
        if binary.get(tensor.name, False):
            chunk = tensor.to_binary()
            entry.parameters = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry.data = tensor.to_json()
        described.append(entry)
    response = InferenceResponse.model_construct(model_name=model_name, model_version=model_version,
                                                 id=request_id, outputs=described)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
