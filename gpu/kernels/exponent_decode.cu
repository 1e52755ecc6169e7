// exponent_decode.cu -- decode `exponent` frames (DFloat11 layout, formats/EXPONENT.md) to BF16.
//
// One launch decodes any number of chunks of any number of tensors into one output buffer of
// uint16 (BF16 bit patterns). The host (codec/gpu/exponent.py) flattens the frames' GPU sync
// indexes into three tables:
//   chunks[c]  one per chunk: where its payload and output are, its stream sizes, its table
//   blocks[b]  one per CUDA block: its chunk, first window and range of output values
//   gaps[]     one byte per window (per thread): bit offset of the first code starting in it
// Every CUDA thread owns one window of window_bytes bytes of its chunk's exponent stream and
// decodes every code that starts in it (the last may run up to max_code_len bits further):
//   1. count pass: decode, count values, check that the window's last code ends where the
//      next window's gap says the next code starts (so a corrupt index cannot go unnoticed);
//   2. block prefix sum of the counts gives each thread's first output position;
//   3. write pass: decode again, merge each symbol with its sign/mantissa remainder, stage
//      the BF16 values in shared memory;
//   4. coalesced copy of the block's values to global memory.
// Unstaged fallback: a block with more values than the staging area writes directly.
//
// Bad input never traps and is never written out of bounds: all reads are bounded by the
// chunk's stream sizes, writes by the block's output range, and each block stores a status
// code (STATUS_*) that the host turns into one FormatError.
//
// Compile-time constants (-D): LUT_BITS (first-level lookup width, <= 11).
// This file includes no headers so that NVRTC (no standard library) compiles it as is; the
// CPU test runtime (cuda_cpu.h) is force-included by its compiler instead.

#ifndef LUT_BITS
#define LUT_BITS 11
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define MAX_LEN 32                          // longest Huffman code the format allows
#define CANON_WORDS (3 * (MAX_LEN + 1))     // first code, count, first index per length
#define SYMS_MAX 2048                       // alphabet of 8 exponent + up to 3 mantissa bits
#define LUT_SIZE (1 << LUT_BITS)
// per-table layout in `tables` (u32 words): lut (LUT_SIZE u16) | canon | sorted symbols (u16)
#define TABLE_WORDS (LUT_SIZE / 2 + CANON_WORDS + SYMS_MAX / 2)

enum {
    STATUS_OK = 0,
    STATUS_TRUNCATED = 1,   // a code runs past the end of the stream, or too few values
    STATUS_BAD_CODE = 2,    // a bit pattern that matches no code of the table
    STATUS_OVERFLOW = 3,    // more values than the block's output range
    STATUS_BAD_SYNC = 4,    // the GPU sync index contradicts the stream (gaps, windows)
    STATUS_BAD_DESC = 5,    // a launch table entry is out of range
};

struct ChunkDesc {          // 48 bytes, mirrored by CHUNK_DTYPE in codec/gpu/exponent.py
    u64 payload_offset;     // chunk payload start in `payload` (multiple of 8)
    u64 out_offset;         // index of the chunk's first value in `out`
    u32 n_values;
    u32 exp_bits;           // bits of Huffman codes
    u32 exp_bytes;          // byte length of the exponent stream (starts at payload + 8)
    u32 rem_offset;         // byte offset of the remainder stream in the payload
    u32 gap_base;           // index of the chunk's window 0 in `gaps`
    u32 n_windows;
    u32 table;              // decode table index
    u32 params;             // bits 0-7 mantissa_bits k, 8-15 window bytes / 4, 16-23 max code length,
                            // bit 31: chunk stored raw (copy n_values little-endian u16)
};
struct BlockDesc {          // 16 bytes
    u32 chunk;
    u32 first_window;       // window index (within the chunk) of thread 0
    u32 out_start;          // first value (within the chunk) this block writes
    u32 out_count;          // values this block writes
};
static_assert(sizeof(ChunkDesc) == 48, "ChunkDesc layout");
static_assert(sizeof(BlockDesc) == 16, "BlockDesc layout");

// Big-endian 32-bit word `i` (4-byte units) of a stream of `nbytes` bytes; zeros past the end.
__device__ __forceinline__ u32 load_be32(const u8* __restrict__ s, u32 i, u32 nbytes)
{
    const u32 byte = i * 4u;
    if (byte + 4u <= nbytes) {
        const u32 w = __ldg(reinterpret_cast<const u32*>(s + byte));
        return __byte_perm(w, 0u, 0x0123u);
    }
    u32 w = 0;
    for (u32 k = 0; k < 4u; ++k) w = (w << 8) | (byte + k < nbytes ? (u32)__ldg(s + byte + k) : 0u);
    return w;
}

// MSB-first bit reader: `buf` holds the next `avail` (>= 32 after refill) bits, left-aligned.
struct BitReader {
    u64 buf;
    int avail;
    u32 next_word;
};

__device__ __forceinline__ void br_init(BitReader& r, const u8* s, u32 nbytes, u64 bitpos)
{
    r.next_word = (u32)(bitpos >> 5);
    r.buf = 0;
    r.avail = 0;
    const int skip = (int)(bitpos & 31u);
    r.buf = (u64)load_be32(s, r.next_word++, nbytes) << 32;
    r.buf |= (u64)load_be32(s, r.next_word++, nbytes);
    r.buf <<= skip;
    r.avail = 64 - skip;
}

__device__ __forceinline__ void br_refill(BitReader& r, const u8* s, u32 nbytes)
{
    if (r.avail <= 32) {
        r.buf |= (u64)load_be32(s, r.next_word++, nbytes) << (32 - r.avail);
        r.avail += 32;
    }
}

// Decode one symbol at the reader's position; returns its length (0: no code matches).
__device__ __forceinline__ u32 decode_one(const BitReader& r, const u16* s_lut, const u32* s_canon,
                                          const u16* __restrict__ syms, u32 max_len, u32& sym)
{
    const u32 top = (u32)(r.buf >> 32);
    const u32 e = s_lut[top >> (32 - LUT_BITS)];
    const u32 len = e >> 11;
    if (len) {
        sym = e & 0x7FFu;
        return len;
    }
    for (u32 l = LUT_BITS + 1; l <= max_len; ++l) {
        const u32 code = top >> (32 - l);
        const u32 d = code - s_canon[l];
        if (d < s_canon[MAX_LEN + 1 + l]) {
            sym = __ldg(&syms[s_canon[2 * (MAX_LEN + 1) + l] + d]);
            return l;
        }
    }
    return 0;
}

extern "C" __global__ void __launch_bounds__(1024) exponent_decode(const u8* __restrict__ payload, const ChunkDesc* __restrict__ chunks,
    const BlockDesc* __restrict__ blocks, const u8* __restrict__ gaps, const u32* __restrict__ tables,
    u16* __restrict__ out, int* __restrict__ status, const u32 n_chunks, const u32 n_tables,
    const u32 staging_capacity)
{
    // dynamic shared memory: lut | canon | per-thread counts | per-warp sums | staging
    extern __shared__ __align__(16) u8 smem[];
    u16* s_lut = reinterpret_cast<u16*>(smem);
    u32* s_canon = reinterpret_cast<u32*>(smem + 2 * LUT_SIZE);
    u32* s_cnt = s_canon + CANON_WORDS;
    u32* s_wsum = s_cnt + blockDim.x;
    u16* s_stage = reinterpret_cast<u16*>(s_wsum + 33);
    __shared__ int s_status;

    const u32 t = threadIdx.x, nt = blockDim.x;
    const BlockDesc bd = blocks[blockIdx.x];
    if (t == 0) s_status = STATUS_OK;
    const bool desc_ok = bd.chunk < n_chunks && chunks[bd.chunk].table < n_tables;
    const ChunkDesc cd = desc_ok ? chunks[bd.chunk] : ChunkDesc{};
    const u32 k = cd.params & 0xFFu, wbytes = 4u * ((cd.params >> 8) & 0xFFu), max_len = (cd.params >> 16) & 0xFFu;
    const bool raw = (cd.params >> 31) != 0;
    const u8* __restrict__ chunk = payload + cd.payload_offset;
    const u8* __restrict__ stream = chunk + 8;
    const u32* tab = tables + (u64)cd.table * TABLE_WORDS;
    const u16* __restrict__ syms = reinterpret_cast<const u16*>(tab + LUT_SIZE / 2 + CANON_WORDS);
    const bool bad_params = !desc_ok || (!raw && (wbytes < 4u || max_len < 1u || max_len > MAX_LEN || k > 3u ||
                                                  (u64)bd.out_start + bd.out_count > cd.n_values));
    if (!bad_params && !raw) {
        const u16* glut = reinterpret_cast<const u16*>(tab);
        for (u32 i = t; i < LUT_SIZE; i += nt) s_lut[i] = __ldg(&glut[i]);
        for (u32 i = t; i < CANON_WORDS; i += nt) s_canon[i] = __ldg(&tab[LUT_SIZE / 2 + i]);
    }
    __syncthreads();
    if (bad_params) {                              // uniform over the block
        if (t == 0) status[blockIdx.x] = STATUS_BAD_DESC;
        return;
    }
    if (raw) {                                     // chunk stored raw by the container: copy
        const u8* src = chunk + 2u * (u64)bd.out_start;
        u16* dst = out + cd.out_offset + bd.out_start;
        for (u32 i = t; i < bd.out_count; i += nt) dst[i] = (u16)(src[2 * i] | ((u32)src[2 * i + 1] << 8));
        if (t == 0) status[blockIdx.x] = STATUS_OK;
        return;
    }

    // ---- 1. count pass -------------------------------------------------------------------
    const u32 wbits = 8u * wbytes;
    const u32 w = bd.first_window + t;
    const u64 win_start = (u64)w * wbits, win_end = win_start + wbits;
    const u64 stop = min(win_end, (u64)cd.exp_bits);
    const u32 gap = w < cd.n_windows ? (u32)gaps[cd.gap_base + w] : 255u;
    int err = STATUS_OK;
    u32 count = 0;
    if (w == 0 && gap != (cd.exp_bits ? 0u : 255u)) err = STATUS_BAD_SYNC;
    if (gap != 255u && gap >= wbits) err = STATUS_BAD_SYNC;
    const bool active = err == STATUS_OK && gap != 255u;
    if (active && win_start + gap >= cd.exp_bits) err = STATUS_BAD_SYNC;
    u64 p = win_start + gap;
    if (active && err == STATUS_OK) {
        BitReader r;
        br_init(r, stream, cd.exp_bytes, p);
        while (p < stop) {
            u32 sym;
            const u32 len = decode_one(r, s_lut, s_canon, syms, max_len, sym);
            if (!len) { err = STATUS_BAD_CODE; break; }
            p += len;
            if (p > cd.exp_bits) { err = STATUS_TRUNCATED; break; }
            r.buf <<= len;
            r.avail -= (int)len;
            br_refill(r, stream, cd.exp_bytes);
            ++count;
        }
        if (err == STATUS_OK) {                    // where does the next code start?
            if (w + 1u < cd.n_windows) {
                const u32 want = p >= cd.exp_bits ? 255u : (u32)(p - win_end);
                if ((u32)gaps[cd.gap_base + w + 1u] != want) err = STATUS_BAD_SYNC;
            } else if (p < cd.exp_bits) {
                err = STATUS_BAD_SYNC;             // the stream goes on past the last window
            }
        }
    }
    if (err != STATUS_OK) atomicMax(&s_status, err);
    s_cnt[t] = count;
    __syncthreads();

    // ---- 2. block exclusive prefix sum of the counts (warp sums, then within the warp) -----
    const u32 nwarps = (nt + 31u) / 32u;
    if (t < nwarps) {
        u32 s = 0;
        const u32 end = min(nt, 32u * t + 32u);
        for (u32 i = 32u * t; i < end; ++i) s += s_cnt[i];
        s_wsum[t] = s;
    }
    __syncthreads();
    if (t == 0) {
        u32 run = 0;
        for (u32 i = 0; i < nwarps; ++i) {
            const u32 s = s_wsum[i];
            s_wsum[i] = run;
            run += s;
        }
        s_wsum[32] = run;                          // the block's total
        if (run != bd.out_count) atomicMax(&s_status, run > bd.out_count ? STATUS_OVERFLOW : STATUS_TRUNCATED);
    }
    __syncthreads();
    u32 first = s_wsum[t / 32u];
    for (u32 i = t & ~31u; i < t; ++i) first += s_cnt[i];
    const int st = s_status;
    const bool staged = bd.out_count <= staging_capacity;

    // ---- 3. write pass ---------------------------------------------------------------------
    if (st == STATUS_OK && active) {
        const u32 sh = 7u - k, lmask = (1u << sh) - 1u, rbits = 8u - k;
        const u8* __restrict__ rem = chunk + cd.rem_offset;
        u16* dst = staged ? s_stage : out + cd.out_offset + bd.out_start;
        BitReader r;
        br_init(r, stream, cd.exp_bytes, win_start + gap);
        for (u32 j = 0; j < count; ++j) {
            u32 sym;
            const u32 len = decode_one(r, s_lut, s_canon, syms, max_len, sym);
            r.buf <<= len;
            r.avail -= (int)len;
            br_refill(r, stream, cd.exp_bytes);
            const u32 o = first + j;               // < out_count: the totals matched
            const u32 v = bd.out_start + o;        // value index within the chunk
            u32 rv;
            if (k == 0u) {
                rv = rem[v];
            } else {
                const u32 bit = v * rbits;
                const u32 two = ((u32)rem[bit >> 3] << 8) | (u32)rem[(bit >> 3) + 1u];
                rv = (two >> (16u - rbits - (bit & 7u))) & ((1u << rbits) - 1u);
            }
            dst[o] = (u16)(((rv >> sh) << 15) | (sym << sh) | (rv & lmask));
        }
    }
    __syncthreads();

    // ---- 4. coalesced copy-out ---------------------------------------------------------------
    if (st == STATUS_OK && staged) {
        u16* dst = out + cd.out_offset + bd.out_start;
        for (u32 i = t; i < bd.out_count; i += nt) dst[i] = s_stage[i];
    }
    if (t == 0) status[blockIdx.x] = st;
}
