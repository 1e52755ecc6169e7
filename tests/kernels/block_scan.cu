// Test kernel for the CPU runtime: inclusive scan of each block's slice of `in`, with the
// block totals written to `sums`. Dynamic shared memory holds a double buffer of
// 2 * blockDim.x words, static shared memory the block total. tests/test_gpu_runtime.py plants
// bugs in it (a missing barrier, an off-by-one) and checks that the runtime catches them.
typedef unsigned int u32;

extern "C" __global__ void block_scan(const u32* __restrict__ in, u32* __restrict__ out,
                                      u32* __restrict__ sums, const u32 n)
{
    extern __shared__ u32 buf[];
    __shared__ u32 total;
    const u32 t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    u32* cur = buf;
    u32* nxt = buf + blockDim.x;
    cur[t] = i < n ? in[i] : 0u;
    __syncthreads();
    for (u32 off = 1; off < blockDim.x; off <<= 1) {
        nxt[t] = cur[t] + (t >= off ? cur[t - off] : 0u);
        __syncthreads();
        u32* tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    if (t == blockDim.x - 1) total = cur[t];
    __syncthreads();
    if (i < n) out[i] = cur[t];
    if (t == 0) sums[blockIdx.x] = total;
}
