"""Host side of the `exponent` GPU decoder: launch tables from frames, launch, status -> errors.

Backend-neutral: `device` is anything with the CuPy subset ``empty``/``asarray``/``asnumpy``
and ``kernel(src, name, defines, filename)`` returning a callable with CuPy's launch
convention -- :class:`codec.gpu.cupy_backend.CupyDevice` on a GPU, or
:class:`codec.gpu.cpu_runtime.CpuDevice`, which runs the same kernel source on the CPU in tests.

Everything the kernel reads is validated here first (chunk headers against the GPU sync
index, block ranges, table sizes), so the kernel only has to check what is per-thread: the
gaps and the code stream itself, which it does, reporting a status per block.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..entropy import exponent as xp
from ..entropy import huffman
from ..errors import FormatError

log = logging.getLogger(__name__)

KERNEL_FILE = Path(__file__).resolve().parent / "kernels" / "exponent_decode.cu"
LUT_BITS = 11
MAX_LEN = 32
CANON_WORDS = 3 * (MAX_LEN + 1)
SYMS_MAX = 2048
LUT_SIZE = 1 << LUT_BITS
TABLE_WORDS = LUT_SIZE // 2 + CANON_WORDS + SYMS_MAX // 2
SMEM_BUDGET = 48 * 1024          # per block, without opt-in: consumer GPUs run it too
STATIC_SMEM = 16                 # s_status (+ alignment slack)
PAYLOAD_ALIGN = 16
PAYLOAD_PAD = 16                 # zero bytes after the last chunk (remainder reads look 1 byte ahead)

CHUNK_DTYPE = np.dtype([("payload_offset", "<u8"), ("out_offset", "<u8"), ("n_values", "<u4"),
                        ("exp_bits", "<u4"), ("exp_bytes", "<u4"), ("rem_offset", "<u4"),
                        ("gap_base", "<u4"), ("n_windows", "<u4"), ("table", "<u4"), ("params", "<u4")])
BLOCK_DTYPE = np.dtype([("chunk", "<u4"), ("first_window", "<u4"), ("out_start", "<u4"), ("out_count", "<u4")])
assert CHUNK_DTYPE.itemsize == 48 and BLOCK_DTYPE.itemsize == 16

STATUS_OK, STATUS_TRUNCATED, STATUS_BAD_CODE, STATUS_OVERFLOW, STATUS_BAD_SYNC, STATUS_BAD_DESC = range(6)
STATUS_TEXT = {
    STATUS_TRUNCATED: "exponent stream truncated (a code runs past its end, or it holds too few values)",
    STATUS_BAD_CODE: "bit pattern that matches no Huffman code",
    STATUS_OVERFLOW: "more values decoded than the block's output range (overflow)",
    STATUS_BAD_SYNC: "GPU sync index contradicts the exponent stream (gap or window count)",
    STATUS_BAD_DESC: "launch table entry out of range",
}


def kernel_source() -> str:
    return KERNEL_FILE.read_text()


def decode_table(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """The kernel's decode table for one code: LUT | canonical first/count/index | sorted symbols."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size > SYMS_MAX or (lengths.size and int(lengths.max()) > max_len) or max_len > MAX_LEN:
        raise FormatError(f"exponent code table does not fit the GPU decoder ({lengths.size} symbols, "
                          f"max length {max_len})")
    words = np.zeros(TABLE_WORDS, np.uint32)
    lut = words[:LUT_SIZE // 2].view(np.uint16)
    canon = words[LUT_SIZE // 2:LUT_SIZE // 2 + CANON_WORDS]
    syms_out = words[LUT_SIZE // 2 + CANON_WORDS:].view(np.uint16)
    codes = huffman.canonical_codes(lengths.astype(np.uint8)).astype(np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    syms_out[:order.size] = order
    first_index = 0
    for ln in range(1, max_len + 1):
        of_len = order[lengths[order] == ln]
        if of_len.size:
            canon[ln] = codes[of_len[0]]
            canon[MAX_LEN + 1 + ln] = of_len.size
            canon[2 * (MAX_LEN + 1) + ln] = first_index
        first_index += of_len.size
        if ln <= LUT_BITS:
            for s in of_len:
                lo = int(codes[s]) << (LUT_BITS - ln)
                lut[lo:lo + (1 << (LUT_BITS - ln))] = (ln << 11) | int(s)
    return words


@dataclass
class TensorSlot:
    name: str
    dtype: str
    shape: tuple
    byte_offset: int             # in the launch's output buffer
    nbytes: int
    first_chunk: int = 0         # launch-wide chunk index of its chunk 0
    n_chunks: int = 0
    host_decoded: np.ndarray | None = None   # non-exponent frames: decoded once on the host


@dataclass
class ExponentPlan:
    """Launch tables for one launch (all frames with the same threads_per_block)."""

    threads_per_block: int
    payload: np.ndarray
    chunks: np.ndarray
    blocks: np.ndarray
    gaps: np.ndarray
    tables: np.ndarray
    block_tensor: np.ndarray     # per launch block: slot index (host bookkeeping for messages)
    block_chunk: np.ndarray      # per launch block: launch-wide chunk index (same)
    slots: list = field(default_factory=list)

    @property
    def max_block_values(self) -> int:
        return int(self.blocks["out_count"].max()) if self.blocks.size else 0

    def shared_layout(self, budget: int = SMEM_BUDGET) -> tuple[int, int]:
        """(dynamic shared bytes, staging capacity in values) within `budget` per block."""
        fixed = 2 * LUT_SIZE + 4 * CANON_WORDS + 4 * self.threads_per_block + 4 * 33
        cap = max(0, min(self.max_block_values, (budget - STATIC_SMEM - fixed) // 2))
        return fixed + 2 * cap, cap

    def describe_block(self, b: int) -> tuple[str, int]:
        slot = self.slots[int(self.block_tensor[b])]
        return slot.name, int(self.block_chunk[b]) - slot.first_chunk


def _sync_for(frame, codec, where: str) -> dict:
    from ..formats.frame import MODE_RAW, SEC_GPU_SYNC

    if SEC_GPU_SYNC in frame.sections:
        sync = xp.parse_gpu_sync(bytes(frame.section_bytes(SEC_GPU_SYNC)))
    else:   # no index in the file: build it on the host once (costs one CPU decode of the frame)
        log.info("%s has no GPU sync index; building it on the host", where)
        modes = frame.index["mode"]
        payloads = [None if int(modes[i]) == MODE_RAW else bytes(frame.encoded_chunk(i))
                    for i in range(frame.chunk_count)]
        nvals = [frame.chunk_decoded_size(i) // 2 for i in range(frame.chunk_count)]
        try:
            sync = xp.parse_gpu_sync(xp.build_gpu_sync(codec, payloads, nvals))
        except (ValueError, IndexError) as exc:
            raise FormatError(f"{where}: cannot build a GPU sync index: {exc}") from None
    return sync


def _validate(frame, codec, sync: dict, where: str) -> None:
    """Check the GPU sync index against the frame's chunks; raise FormatError naming the chunk."""
    from ..formats.frame import MODE_RAW

    ct, bt, tpb, bpt = sync["chunks"], sync["blocks"], sync["threads_per_block"], sync["bytes_per_thread"]
    if sync["mantissa_bits"] != codec.mantissa_bits:
        raise FormatError(f"{where}: GPU sync index says mantissa_bits {sync['mantissa_bits']}, "
                          f"the codec config {codec.mantissa_bits}")
    if bpt not in (4, 8, 16, 32, 64) or tpb not in (32, 64, 128, 256, 512, 1024):
        raise FormatError(f"{where}: GPU sync index has bytes_per_thread {bpt}, threads_per_block {tpb}")
    if ct.size != frame.chunk_count:
        raise FormatError(f"{where}: GPU sync index lists {ct.size} chunks, the frame has {frame.chunk_count}")
    modes = frame.index["mode"]
    next_block = 0
    for i in range(ct.size):
        c = ct[i]
        cw = f"{where}, chunk {i}"
        n = frame.chunk_decoded_size(i) // 2
        if int(c["n_values"]) != n or int(c["first_value"]) != i * (frame.chunk_size // 2):
            raise FormatError(f"{cw}: GPU sync index gives {int(c['n_values'])} values at "
                              f"{int(c['first_value'])}, expected {n} at {i * (frame.chunk_size // 2)}")
        if int(c["first_block"]) != next_block:
            raise FormatError(f"{cw}: GPU sync index first block {int(c['first_block'])}, expected {next_block}")
        enc = frame.encoded_chunk(i)
        if int(modes[i]) == MODE_RAW:
            if int(c["n_blocks"]) != 0 or len(enc) != 2 * n:
                raise FormatError(f"{cw}: raw chunk of {len(enc)} bytes with {int(c['n_blocks'])} GPU blocks")
            continue
        buf = np.frombuffer(enc, np.uint8)
        n_hdr, nbits, E, R = codec._parse(buf, n, cw)    # FormatError on any inconsistency
        nb = int(c["n_blocks"])
        if (int(c["exp_bits"]) != nbits or int(c["exp_offset"]) != xp.HEADER
                or int(c["rem_offset"]) != xp.HEADER + E or nb < 1 or nb * tpb * bpt * 8 < nbits
                or (nb - 1) * tpb * bpt * 8 > max(nbits - 1, 0)):
            raise FormatError(f"{cw}: GPU sync index entry (bits {int(c['exp_bits'])}, offsets "
                              f"{int(c['exp_offset'])}/{int(c['rem_offset'])}, {nb} blocks) does not match the "
                              f"chunk ({nbits} bits, remainder at {xp.HEADER + E})")
        if next_block + nb > bt.size:
            raise FormatError(f"{cw}: GPU sync index has fewer blocks than its chunk table needs")
        b = bt[next_block:next_block + nb]
        starts = b["out_start"].astype(np.int64)
        if (np.any(b["chunk"] != i) or np.any(b["first_window"] != np.arange(nb, dtype=np.int64) * tpb)
                or starts[0] != 0 or np.any(np.diff(starts) < 0) or starts[-1] > n):
            raise FormatError(f"{cw}: GPU sync index block table is inconsistent (chunk ids, windows or "
                              f"output starts)")
        next_block += nb
    if next_block != bt.size:
        raise FormatError(f"{where}: GPU sync index has {bt.size} blocks, its chunks use {next_block}")


def build_plans(entries, align: int = 256) -> tuple[list[ExponentPlan], list[TensorSlot], int]:
    """Launch plans for `entries` = [(name, Frame)], output byte layout and total output bytes.

    Exponent frames are grouped by threads_per_block (one launch per group, usually one);
    other frames are decoded on the host here and copied into the output at decode time.
    """
    slots: list[TensorSlot] = []
    offset = 0
    groups: dict[int, dict] = {}
    for name, frame in entries:
        where = f"tensor {name!r}"
        slot = TensorSlot(name, frame.dtype, tuple(frame.shape), offset, frame.decoded_size)
        slots.append(slot)
        offset += -(-frame.decoded_size // align) * align
        if frame.codec_id != xp.Exponent.codec_id or frame.chunk_count == 0:
            slot.host_decoded = frame.decode()
            continue
        if frame.dtype != "BF16" or frame.chunk_size % 2:
            raise FormatError(f"{where}: exponent frame of dtype {frame.dtype}, chunk size {frame.chunk_size}")
        codec = frame.codec
        if codec.lengths is None:
            raise FormatError(f"{where}: exponent frame without a code table")
        sync = _sync_for(frame, codec, where)
        _validate(frame, codec, sync, where)
        g = groups.setdefault(sync["threads_per_block"], {"payload": [], "pay_len": 0, "chunks": [], "blocks": [],
                                                          "gaps": [], "gap_len": 0, "tables": [], "owner": []})
        table_index = len(g["tables"])
        g["tables"].append(decode_table(codec.lengths, codec.max_code_len))
        slot_index = len(slots) - 1
        slot.first_chunk = len(g["chunks"])
        slot.n_chunks = frame.chunk_count
        ct, bt, tpb, bpt = sync["chunks"], sync["blocks"], sync["threads_per_block"], sync["bytes_per_thread"]
        raw_modes = frame.index["mode"]
        for i in range(frame.chunk_count):
            enc = np.frombuffer(frame.encoded_chunk(i), np.uint8)
            pay_off = g["pay_len"]
            g["payload"].append((pay_off, enc))
            g["pay_len"] = -(-(pay_off + enc.size) // PAYLOAD_ALIGN) * PAYLOAD_ALIGN
            c = ct[i]
            n = int(c["n_values"])
            row = np.zeros((), CHUNK_DTYPE)
            row["payload_offset"] = pay_off
            row["out_offset"] = slot.byte_offset // 2 + int(c["first_value"])
            row["n_values"] = n
            row["table"] = table_index
            launch_chunk = len(g["chunks"])
            if int(raw_modes[i]) != 0 or int(c["n_blocks"]) == 0:     # stored raw: copy blocks
                row["params"] = np.uint32(1 << 31)
                per = 8192
                for s in range(0, max(n, 1), per):      # raw blocks read no gaps
                    g["blocks"].append((launch_chunk, 0, s, min(per, n - s)))
                    g["owner"].append(slot_index)
            else:
                nbits, E = int(c["exp_bits"]), int(c["rem_offset"]) - xp.HEADER
                fb, nb = int(c["first_block"]), int(c["n_blocks"])
                row["exp_bits"], row["exp_bytes"], row["rem_offset"] = nbits, E, int(c["rem_offset"])
                row["gap_base"] = g["gap_len"]
                row["n_windows"] = nb * tpb
                row["params"] = codec.mantissa_bits | (bpt // 4) << 8 | codec.max_code_len << 16
                starts = bt["out_start"][fb:fb + nb].astype(np.int64)
                ends = np.append(starts[1:], n)
                for j in range(nb):
                    g["blocks"].append((launch_chunk, j * tpb, int(starts[j]), int(ends[j] - starts[j])))
                    g["owner"].append(slot_index)
                chunk_gaps = sync["gaps"][fb:fb + nb].reshape(-1)
                g["gaps"].append(chunk_gaps)
                g["gap_len"] += chunk_gaps.size
            g["chunks"].append(row)
    plans = []
    for tpb, g in groups.items():
        payload = np.zeros(g["pay_len"] + PAYLOAD_PAD, np.uint8)
        for off, enc in g["payload"]:
            payload[off:off + enc.size] = enc
        plans.append(ExponentPlan(
            threads_per_block=tpb, payload=payload,
            chunks=np.array(g["chunks"], CHUNK_DTYPE) if g["chunks"] else np.zeros(0, CHUNK_DTYPE),
            blocks=np.array(g["blocks"], BLOCK_DTYPE),
            gaps=np.concatenate(g["gaps"]) if g["gaps"] else np.zeros(0, np.uint8),
            tables=np.concatenate(g["tables"]), block_tensor=np.array(g["owner"], np.int64),
            block_chunk=np.array([b[0] for b in g["blocks"]], np.int64), slots=slots))
    return plans, slots, offset


class ExponentLauncher:
    """Device-resident launch tables for one set of frames; `run(out_u16)` decodes into `out`."""

    def __init__(self, plan: ExponentPlan, device, lut_bits: int = LUT_BITS) -> None:
        if lut_bits != LUT_BITS:
            raise ValueError("the decode tables are built for LUT_BITS = %d" % LUT_BITS)
        self.plan, self.device = plan, device
        self.kernel = device.kernel(kernel_source(), "exponent_decode", {"LUT_BITS": lut_bits},
                                    "exponent_decode.cu")
        d = device
        self.d_payload = d.asarray(plan.payload)
        self.d_chunks = d.asarray(plan.chunks.view(np.uint8))
        self.d_blocks = d.asarray(plan.blocks.view(np.uint8))
        self.d_gaps = d.asarray(plan.gaps if plan.gaps.size else np.zeros(1, np.uint8))
        self.d_tables = d.asarray(plan.tables)
        self.d_status = d.empty(max(plan.blocks.size, 1), np.int32)
        self.smem, self.capacity = plan.shared_layout()

    def run(self, out_u16) -> None:
        p = self.plan
        if p.blocks.size == 0:
            return
        self.kernel((int(p.blocks.size),), (p.threads_per_block,),
                    (self.d_payload, self.d_chunks, self.d_blocks, self.d_gaps, self.d_tables, out_u16,
                     self.d_status, np.uint32(p.chunks.size), np.uint32(p.tables.size // TABLE_WORDS),
                     np.uint32(self.capacity)),
                    shared_mem=self.smem)

    def check(self) -> None:
        """Read the per-block status and raise one FormatError for the first failing block."""
        status = self.device.asnumpy(self.d_status)[:self.plan.blocks.size]
        bad = np.flatnonzero(status)
        if bad.size:
            b = int(bad[0])
            code = int(status[b])
            name, chunk = self.plan.describe_block(b)
            more = f" ({bad.size} blocks failed)" if bad.size > 1 else ""
            raise FormatError(f"tensor {name!r}, chunk {chunk}: GPU decode failed in block {b}: "
                              f"{STATUS_TEXT.get(code, f'status {code}')}{more}")
