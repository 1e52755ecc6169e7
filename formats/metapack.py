"""Packed metadata (format 1.1): a frame's JSON config or a file's manifest as one zstd frame.

A small input pays for its metadata: a 20 KB text compressed by the `llm` codec carried about
1 KB of JSON (model fingerprints, library versions, the manifest with the original's sha256),
a sixth of what xz -9 needs for the whole text. Zstandard with a built-in dictionary of the
strings such JSON is made of (keys, codec ids, dtype names, version strings) packs it to about a
quarter; what remains is mostly the hex digests, which no dictionary can predict.

The dictionary is part of the format (SPEC.md section 2.3): a "raw content" zstd dictionary whose
bytes are `DICTIONARY` below, frozen for format 1.1 (its sha256 is pinned by a test and in the
spec). Changing a byte of it would make every packed frame written so far unreadable.
"""
from __future__ import annotations

from ..errors import FormatError

# Frozen (format 1.1). Raw content: zstd matches into it as if it preceded the data, nearer
# bytes cost less, so the most common strings come last.
DICTIONARY = (
    b'{"codec":{"id":"bytegroup","planes":"huffman","rotate":1},"dtype":"F16","shape":[]}'
    b'{"codec":{"id":"exponent","k":1,"max_len":24},"dtype":"BF16","shape":[]}'
    b'{"codec":{"id":"zstd","level":3},"dtype":"F32","shape":[]}'
    b'{"codec":{"id":"raw"},"dtype":"I8","shape":[]}'
    b'"metadata":{"format":"pt"},"lossy":{"decoded_sha256":"","group_size":128,"scheme":"int8","tensors":'
    b'{"role":"header","offset":64,"length":'
    b'{"name":"model.layers.0.self_attn.q_proj.weight","offset":'
    b'{"container":"safetensors","entries":[{"length":'
    b'{"container":"bytes","entries":[{"length":3000,"offset":64,"role":"bytes"}],"format":[1,1],'
    b'"library":"codec 0.1.0","metadata":null,"original_sha256":"0123456789abcdef","original_size":'
    b'{"codec":{"attn":"sdpa","batch":24,"dtype":"bfloat16","eval_path":"lean-llama-1",'
    b'"eval_threads":2,"freq_rule":"freq-v1","id":"llm","lanes":1,"max_window":1024,'
    b'"min_window":384,"model":"smollm2-135m-instruct","model_sha256":"0123456789abcdef",'
    b'"n_symbols":49173,"precision":24,"start_token":1,"tokenizer_sha256":"0123456789abcdef",'
    b'"versions":{"constriction":"0.5.0","torch":"2.13.0+cpu","transformers":"5.23.0"}},'
    b'"dtype":"U8","shape":[20000]}'
)
DICTIONARY_SHA256 = "484d8103b00a442144acce61817128c10d97bbb3aec26f33ef0161df8c8159f2"   # SPEC.md section 2.3; tests check it

_ZSTD = None


def _zstd():
    global _ZSTD
    if _ZSTD is None:
        import zstandard

        d = zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        _ZSTD = (zstandard, d)
    return _ZSTD


def pack(blob: bytes) -> bytes:
    """The zstd frame of `blob` (level 19, content size written, no checksum: the container's
    XXH3 covers the stored bytes)."""
    zstandard, d = _zstd()
    c = zstandard.ZstdCompressor(level=19, dict_data=d, write_checksum=False,
                                 write_content_size=True, write_dict_id=False)
    return c.compress(blob)


def unpack(data: bytes, limit: int, what: str) -> bytes:
    """Inverse of `pack`. Hostile input: the frame must declare its size (at most `limit`),
    decode to exactly that many bytes and end where `data` ends; else FormatError."""
    zstandard, d = _zstd()
    data = bytes(data)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: packed metadata has no valid zstd frame header ({exc})") from None
    if not 0 <= declared <= limit:
        raise FormatError(f"{what}: packed metadata declares {declared} bytes (limit {limit}, "
                          f"-1 = not declared)")
    # libzstd checks the running output against the declared size block by block, so a frame
    # cannot expand much past it before failing.
    dobj = zstandard.ZstdDecompressor(dict_data=d).decompressobj()
    try:
        out = dobj.decompress(data)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: packed metadata does not decompress ({exc})") from None
    if len(out) != declared or not dobj.eof or dobj.unused_data:
        raise FormatError(f"{what}: packed metadata decodes to {len(out)} of {declared} declared bytes"
                          + (" and has bytes after its zstd frame" if dobj.unused_data else ""))
    return out
