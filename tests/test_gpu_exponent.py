"""The `exponent` GPU kernel (gpu/kernels/exponent_decode.cu), executed on the CPU runtime.

Real weights (MiniLM and Whisper tiny.en rounded to BF16) are encoded with the exponent codec,
a whole transformer block is decoded by one launch of the unmodified kernel source under
several thread schedules with guard pages around every buffer, and the output is compared bit
for bit with the input, the numba decoder (Frame.decode) and the numpy reference decoder.
Corrupt inputs must become one FormatError naming the tensor and chunk, never a fault.
"""
from __future__ import annotations

import numpy as np
import pytest

from codec import _reference, datasets
from codec.entropy import exponent as xp
from codec.errors import BackendUnavailableError, FormatError
from codec.formats.frame import SEC_GPU_SYNC, encode_frame, parse_frame
from codec.gpu import BlockDecoder
from codec.gpu import exponent as ge
from codec.gpu.cpu_runtime import CpuDevice, precompile
from codec.registry import get_codec
from gpu_frames import bf16_from_f16, make_frame, synthetic

SCHEDULES = ["forward", "reverse", "random:11"]


@pytest.fixture(scope="module", autouse=True)
def _compile_kernel():
    precompile([(ge.kernel_source(), {"LUT_BITS": ge.LUT_BITS}, "exponent_decode.cu")])


@pytest.fixture(scope="module")
def minilm_block():
    """MiniLM encoder layer 0 in BF16: {name: (shape, raw bytes)} and its frames (with sync sections)."""
    tensors = datasets.minilm_tensors("BF16")
    raw = {n: (shape, data) for n, (dt, shape, data) in tensors.items()
           if n.startswith("encoder.layer.0.") and dt == "BF16"}
    frames = {n: make_frame(data, shape) for n, (shape, data) in raw.items()}
    return raw, frames


@pytest.fixture(scope="module")
def whisper_block():
    """Whisper tiny.en decoder layer 0, FP16 rounded to BF16; small chunks so tensors span several."""
    tensors, _ = datasets.read_ct2(datasets.whisper_ct2_path())
    raw = {n: (shape, bf16_from_f16(data)) for n, (dt, shape, data) in tensors.items()
           if n.startswith("decoder/layer_0/") and dt == "F16"}
    frames = {n: make_frame(data, shape, chunk_size=1 << 16) for n, (shape, data) in raw.items()}
    return raw, frames


def check_block(dec: BlockDecoder, raw: dict) -> None:
    buf = dec.decode_raw()
    for s in dec.slots:
        got = np.asarray(buf[s.byte_offset:s.byte_offset + s.nbytes])
        assert got.tobytes() == raw[s.name][1].tobytes(), s.name


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_minilm_block_bit_exact(minilm_block, schedule):
    raw, frames = minilm_block
    assert all(SEC_GPU_SYNC in f.sections for f in frames.values())
    dec = BlockDecoder(frames, device=CpuDevice(schedule=schedule))
    assert len(dec.plans) == 1 and len(dec.slots) == len(raw)       # one launch for the block
    check_block(dec, raw)


def test_minilm_matches_numba_and_numpy_reference(minilm_block):
    raw, frames = minilm_block
    name = "encoder.layer.0.attention.self.query.weight"
    frame = frames[name]
    dec = BlockDecoder({name: frame}, device=CpuDevice(schedule="random:3", align="start"))
    gpu = np.asarray(dec.decode_raw()[:frame.decoded_size])
    numba = frame.decode()
    ref = np.concatenate([_reference.exponent_decode(bytes(frame.encoded_chunk(i)), frame.config["codec"],
                                                     frame.chunk_decoded_size(i))
                          for i in range(frame.chunk_count)])
    assert gpu.tobytes() == numba.tobytes() == ref.tobytes() == raw[name][1].tobytes()


@pytest.mark.parametrize("schedule", ["reverse", "random:5"])
def test_whisper_block_bit_exact_multi_chunk(whisper_block, schedule):
    raw, frames = whisper_block
    assert max(f.chunk_count for f in frames.values()) > 1
    check_block(BlockDecoder(frames, device=CpuDevice(schedule=schedule)), raw)


def test_returns_torch_tensors_of_the_logical_dtype(minilm_block):
    torch = pytest.importorskip("torch")
    raw, frames = minilm_block
    out = BlockDecoder(frames, device=CpuDevice()).decode()
    for name, t in out.items():
        shape, data = raw[name]
        assert t.dtype == torch.bfloat16 and list(t.shape) == list(shape)
        assert t.view(torch.int16).numpy().tobytes() == data.tobytes()


@pytest.mark.parametrize("cfg", [
    {"mantissa_bits": 0},
    {"mantissa_bits": 1},
    {"mantissa_bits": 2, "max_code_len": 14},
    {"mantissa_bits": 3, "bytes_per_thread": 4, "threads_per_block": 32},
    {"mantissa_bits": 0, "bytes_per_thread": 16, "threads_per_block": 128},
    {"mantissa_bits": 0, "max_code_len": 12, "threads_per_block": 1024},
])
def test_layouts_and_long_codes(cfg):
    raw = {f"t{i}": ((n,), synthetic(n, i, wide=True)) for i, n in enumerate([1, 7, 3001, 40_000])}
    frames = {k: make_frame(v[1], v[0], chunk_size=1 << 14, **cfg) for k, v in raw.items()}
    check_block(BlockDecoder(frames, device=CpuDevice(schedule="random:2")), raw)


def test_unstaged_path_and_frames_without_sync_section(minilm_block):
    raw, _ = minilm_block
    name = "encoder.layer.0.intermediate.dense.weight"
    frame = make_frame(raw[name][1], raw[name][0], sync_section=False)
    assert SEC_GPU_SYNC not in frame.sections                 # the index is built on the host
    dec = BlockDecoder({name: frame}, device=CpuDevice(schedule="reverse"))
    dec.launchers[0].capacity = 64                            # blocks write straight to global memory
    check_block(dec, {name: raw[name]})


def test_mixed_block_with_raw_chunks_and_other_codecs():
    vals = synthetic(5000, 9)
    noise = np.random.default_rng(1).integers(0, 1 << 16, 3000, dtype=np.uint16).view(np.uint8)
    f32 = np.random.default_rng(2).standard_normal(100).astype(np.float32).view(np.uint8)
    frames = {
        "bf16": make_frame(vals, (5000,), chunk_size=1 << 12),
        "noise": make_frame(noise, (3000,), chunk_size=1 << 11),     # incompressible: raw chunks
        "f32": parse_frame(memoryview(encode_frame(f32, get_codec("zstd"), "F32", [100]))),
        "empty": make_frame(np.zeros(0, np.uint8), (0,)),
    }
    raw = {"bf16": ((5000,), vals), "noise": ((3000,), noise), "f32": ((100,), f32), "empty": ((0,), vals[:0])}
    assert (frames["noise"].index["mode"] == 1).any()
    check_block(BlockDecoder(frames, device=CpuDevice(schedule="random:4")), raw)


# ---------------------------------------------------------------------------------------------
# bad input: status codes -> one FormatError naming tensor and chunk; never a fault
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_frames():
    raw = {"a": ((20_000,), synthetic(20_000, 1)), "b": ((30_000,), synthetic(30_000, 2, wide=True))}
    return raw, {k: make_frame(v[1], v[0], chunk_size=1 << 14) for k, v in raw.items()}


def launch_tampered(frames, tamper, schedule="forward"):
    plans, slots, nbytes = ge.build_plans(list(frames.items()))
    tamper(plans[0])
    dev = CpuDevice(schedule=schedule)
    lau = ge.ExponentLauncher(plans[0], dev)
    out = dev.zeros(nbytes // 2, np.uint16)
    lau.run(out)
    lau.check()
    return out


def _tensor_b_chunk(plan, chunk=1):
    slot = [s for s in plan.slots if s.name == "b"][0]
    return slot.first_chunk + chunk


@pytest.mark.parametrize("what, chunk, status", [
    ("gap", 1, "GPU sync index contradicts"),
    ("more_values", 1, "truncated"),
    ("fewer_values", 1, "overflow"),
    ("exp_bits", 1, "truncated|contradicts"),
    ("table", 0, "matches no Huffman code"),       # the table serves every chunk of the tensor
    ("chunk_id", 1, "launch table entry out of range"),
])
def test_corruption_gives_one_format_error_naming_tensor_and_chunk(small_frames, what, chunk, status):
    _, frames = small_frames

    def tamper(plan):
        c = _tensor_b_chunk(plan)
        blocks = np.flatnonzero(plan.blocks["chunk"] == c)
        if what == "gap":
            plan.gaps[int(plan.chunks[c]["gap_base"]) + 37] ^= 3
        elif what == "more_values":      # the index promises more values than the stream holds
            plan.blocks["out_count"][blocks[0]] += 1
        elif what == "fewer_values":
            plan.blocks["out_count"][blocks[0]] -= 1
        elif what == "exp_bits":
            plan.chunks["exp_bits"][c] -= 3
        elif what == "table":   # drop the longest codes: their bit patterns match nothing now
            t = int(plan.chunks["table"][c])
            words = plan.tables[t * ge.TABLE_WORDS:(t + 1) * ge.TABLE_WORDS]
            canon = words[ge.LUT_SIZE // 2:ge.LUT_SIZE // 2 + ge.CANON_WORDS]
            counts = canon[ge.MAX_LEN + 1:2 * (ge.MAX_LEN + 1)]
            counts[np.flatnonzero(counts)[-1]] = 0
        elif what == "chunk_id":
            plan.blocks["chunk"][blocks[0]] = 10_000
    with pytest.raises(FormatError, match=rf"tensor 'b', chunk {chunk}: GPU decode failed .*({status})"):
        launch_tampered(frames, tamper)


def test_fuzzed_inputs_decode_correctly_or_raise_format_error(small_frames):
    """Random byte flips in payload and gaps: a FormatError or a result, never a fault/hang."""
    raw, frames = small_frames
    rng = np.random.default_rng(0)
    errors = 0
    for trial in range(12):
        def tamper(plan):
            arr = plan.payload if trial % 2 else plan.gaps
            for _ in range(1 + trial % 3):
                arr[rng.integers(0, arr.size - ge.PAYLOAD_PAD if arr is plan.payload else arr.size)] ^= \
                    np.uint8(1 << rng.integers(0, 8))
        try:
            launch_tampered(frames, tamper, schedule=SCHEDULES[trial % 3])
        except FormatError:
            errors += 1
    assert errors >= 6


def test_corrupt_sync_section_is_rejected_on_the_host(small_frames):
    raw, frames = small_frames
    frame = frames["b"]
    sync = xp.parse_gpu_sync(bytes(frame.section_bytes(SEC_GPU_SYNC)))
    blocks = sync["blocks"].copy()
    blocks["out_start"][1] = 10 ** 9
    ct = sync["chunks"]
    bad = bytes(frame.section_bytes(SEC_GPU_SYNC))[:24 + ct.nbytes] + blocks.tobytes() + sync["gaps"].tobytes()
    with pytest.raises(FormatError, match=r"tensor 'b', chunk 0: GPU sync index block table"):
        ge._validate(frame, frame.codec, xp.parse_gpu_sync(bad), "tensor 'b'")


def test_shared_memory_fits_48k_and_is_enforced(minilm_block):
    _, frames = minilm_block
    plans, _, _ = ge.build_plans(list(frames.items()))
    smem, cap = plans[0].shared_layout()
    assert smem + ge.STATIC_SMEM <= 48 * 1024 and cap == plans[0].max_block_values


def test_gpu_api_without_cupy_raises_backend_unavailable(minilm_block):
    import subprocess
    import sys

    import codec.gpu

    # importing codec and codec.gpu never imports CuPy (checked in a fresh interpreter, since
    # other tests in this process may have imported it for the NVRTC checks)
    probe = "import sys, codec, codec.gpu; codec.gpu.available; print('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    _, frames = minilm_block
    if not codec.gpu.available():
        with pytest.raises(BackendUnavailableError):
            codec.gpu.BlockDecoder(frames)
