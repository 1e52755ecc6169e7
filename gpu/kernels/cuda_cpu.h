// cuda_cpu.h -- executes CUDA C kernel sources on the CPU with CUDA semantics, for tests.
//
// codec.gpu.cpu_runtime force-includes this header (g++ -include cuda_cpu.h) in front of an
// unmodified kernel source (*.cu, compiled as C++20) and appends one CUCPU_EXPORT(name) per
// kernel. Nothing here is used on a GPU; NVRTC/nvcc never see this file.
//
// Execution model
//   * Blocks of the grid run one after another on the calling OS thread.
//   * Fiber mode (default): each CUDA thread of a block is a fiber (ucontext for the first
//     entry, _setjmp/_longjmp for every later switch). A fiber runs until it reaches
//     __syncthreads() or returns; once every fiber of the block waits at the barrier they are
//     all released. The order in which the fibers run between two barriers is the *schedule*:
//     forward (0,1,2,..), reverse, or random (reshuffled after every barrier, seeded). A
//     kernel with a missing barrier reads shared memory another thread has not written yet
//     under at least one of these orders.
//   * Thread mode (-DCUCPU_THREADS=1): one OS thread per CUDA thread, std::barrier for
//     __syncthreads(): real pre-emptive concurrency.
//   * Static __shared__ variables live in the linker section "cucpu_smem" and are filled with
//     a poison byte before every block, as is dynamic shared memory, which ends at a
//     PROT_NONE guard page. Static + dynamic shared memory above the launch's limit (48 KiB
//     unless raised) fails the launch, as cudaLaunchKernel does.
//   * A barrier that not every thread of the block reaches, or that threads reach at
//     different source lines, fails the launch (CUDA leaves it undefined).
//   * Faults (SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGABRT) are reported only when the launch runs
//     isolated (a forked child, see cpu_runtime.py): the handler records signal, address,
//     block and thread in the shared report and calls _exit.
#pragma once

// Only light headers in fiber mode: g++ compiles every kernel variant (and test mutant) against
// this file, and <random>, <thread>, <atomic>... would triple the compile time.
#include <csetjmp>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#if CUCPU_THREADS
#include <barrier>
#include <thread>
#include <vector>
#endif

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define CUDA_CPU_RUNTIME 1

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// ---- CUDA declaration specifiers ------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
#define __shared__ static __attribute__((section("cucpu_smem"), used))
#define warpSize 32

extern "C" char __start_cucpu_smem[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cucpu_smem[] __attribute__((weak, visibility("hidden")));

// ---- the interface shared with cpu_runtime.py (keep in sync with its ctypes structures) ----
extern "C" {
struct cucpu_options {
    int32_t schedule;        // 0 forward, 1 reverse, 2 random
    uint32_t seed;           // random schedule seed
    uint64_t smem_limit;     // static + dynamic shared bytes allowed per block
    int32_t poison;          // byte written over shared memory before each block, -1: none
    int32_t isolated;        // 1: we run in a forked child; install fault handlers
    uint64_t stack_bytes;    // fiber stack size
};
struct cucpu_report {
    int32_t code;            // 0 ok, else one of CUCPU_E*
    int32_t signal;
    uint64_t address;        // faulting address for signals
    uint32_t block[3];
    uint32_t thread[3];
    int32_t line;            // kernel source line (barrier errors)
    int32_t have_thread;     // block/thread fields are valid
    uint64_t smem_begin;     // dynamic shared memory of the launch, for fault messages
    uint64_t smem_end;
    char message[432];
};
}

enum : int {
    CUCPU_OK = 0,
    CUCPU_EBADLAUNCH = 1,    // bad grid/block size, too much shared memory
    CUCPU_EBARRIER = 2,      // divergent or incomplete __syncthreads
    CUCPU_ETRAP = 3,         // __trap() / assert in kernel code
    CUCPU_ESIGNAL = 4,       // fault (only in isolated runs)
    CUCPU_EINTERNAL = 5,
};

namespace cucpu {

struct Launch {
    dim3 grid, block;
    uint3 bid;
    size_t smem = 0;
    unsigned char* dyn_smem = nullptr;
    const cucpu_options* opt = nullptr;
    cucpu_report* rep = nullptr;
    void (*invoke)(void* fn, void** args) = nullptr;
    void* fn = nullptr;
    void** args = nullptr;
};

inline Launch* g_launch = nullptr;             // one launch at a time per process
inline void* dynamic_smem() { return g_launch->dyn_smem; }

inline void report(int code, const char* msg, int line = -1) {
    cucpu_report* r = g_launch->rep;
    if (r->code) return;                       // keep the first error
    r->code = code;
    r->line = line;
    std::snprintf(r->message, sizeof r->message, "%s", msg);
}

inline size_t static_smem_bytes() {
    const uintptr_t a = (uintptr_t)__start_cucpu_smem, b = (uintptr_t)__stop_cucpu_smem;
    return a && b > a ? (size_t)(b - a) : 0;
}

inline void poison_shared() {
    const int byte = g_launch->opt->poison;
    if (byte < 0) return;
    if (size_t n = static_smem_bytes()) std::memset(__start_cucpu_smem, byte, n);
    if (g_launch->smem) std::memset(g_launch->dyn_smem, byte, g_launch->smem);
}

inline void set_block(unsigned long long b) {
    const dim3 g = g_launch->grid;
    g_launch->bid = uint3{(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y),
                          (unsigned)(b / ((unsigned long long)g.x * g.y))};
}

inline uint3 thread_of(unsigned i) {
    const dim3 d = g_launch->block;
    return uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)};
}

// ---- fault reporting (isolated runs only) -----------------------------------------------------
inline thread_local const uint3* tl_fault_tid = nullptr;   // thread whose code is running

inline void fault_handler(int sig, siginfo_t* si, void*) {
    cucpu_report* r = g_launch ? g_launch->rep : nullptr;
    if (r && !r->code) {
        r->code = CUCPU_ESIGNAL;
        r->signal = sig;
        r->address = si ? (uint64_t)(uintptr_t)si->si_addr : 0;
        if (tl_fault_tid) {
            const uint3 b = g_launch->bid, t = *tl_fault_tid;
            r->block[0] = b.x; r->block[1] = b.y; r->block[2] = b.z;
            r->thread[0] = t.x; r->thread[1] = t.y; r->thread[2] = t.z;
            r->have_thread = 1;
        }
    }
    _exit(70);
}

inline void install_fault_handlers() {
    static char altstack[1 << 16];
    stack_t ss{};
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    sigaltstack(&ss, nullptr);   // a fiber stack overflow still reaches the handler
    struct sigaction sa{};
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(s, &sa, nullptr);
}

// Guarded block of memory: [PROT_NONE page][usable bytes ... end][PROT_NONE page].
struct GuardedMem {
    unsigned char* map = nullptr;
    size_t map_len = 0;
    unsigned char* ptr = nullptr;
    bool alloc(size_t n) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t body = (n + page - 1) / page * page;
        map_len = body + 2 * page;
        void* m = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { map = nullptr; return false; }
        map = (unsigned char*)m;
        mprotect(map, page, PROT_NONE);
        mprotect(map + page + body, page, PROT_NONE);
        ptr = map + page + body - n;           // the last usable byte touches the guard page
        return true;
    }
    ~GuardedMem() { if (map) munmap(map, map_len); }
};

#if !CUCPU_THREADS
// =============================== fiber mode ==================================================
enum State : int { RUNNABLE, AT_BARRIER, FINISHED, FAILED };

struct Fiber {
    ucontext_t uc;
    jmp_buf jb;
    uint3 tid;
    State state;
    int line;
    bool started;
    GuardedMem stack;
};

struct Scheduler {
    Fiber* fibers = nullptr;
    unsigned* order = nullptr;
    Fiber* cur = nullptr;
    jmp_buf home;
    uint64_t rng = 0;
    ~Scheduler() { delete[] fibers; delete[] order; }
    uint64_t next_random() {                 // splitmix64
        uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    void shuffle(unsigned n) {               // Fisher-Yates
        for (unsigned i = n; i > 1; --i) {
            const unsigned j = (unsigned)(next_random() % i);
            const unsigned t = order[i - 1]; order[i - 1] = order[j]; order[j] = t;
        }
    }
};

inline Scheduler* g_sched = nullptr;

[[gnu::noinline]] inline void yield_to_scheduler(Fiber* f) {
    asm volatile("" ::: "memory");
    if (!_setjmp(f->jb)) _longjmp(g_sched->home, 1);
    asm volatile("" ::: "memory");
}

// A fiber is created once per launch and runs the kernel body once per block: after the body
// returns it parks as FINISHED and the next block resumes it right here.
inline void fiber_main() {
    Fiber* f = g_sched->cur;
    for (;;) {
        g_launch->invoke(g_launch->fn, g_launch->args);
        f->state = FINISHED;
        yield_to_scheduler(f);
    }
}

[[gnu::noinline]] inline void barrier(int line) {
    Fiber* f = g_sched->cur;
    f->state = AT_BARRIER;
    f->line = line;
    yield_to_scheduler(f);
}

[[gnu::noinline]] inline void trap(int line) {
    report(CUCPU_ETRAP, "__trap() called in kernel code", line);
    Fiber* f = g_sched->cur;
    f->state = FAILED;
    _longjmp(g_sched->home, 1);   // never resumed
}

inline const uint3& cur_tid() { return g_sched->cur->tid; }

inline void resume(Fiber& f) {
    g_sched->cur = &f;
    tl_fault_tid = &f.tid;
    asm volatile("" ::: "memory");
    if (!_setjmp(g_sched->home)) {
        if (f.started) _longjmp(f.jb, 1);
        f.started = true;
        setcontext(&f.uc);
    }
    asm volatile("" ::: "memory");
    tl_fault_tid = nullptr;
}

// Runs one block; returns false after reporting an error.
inline bool run_block(Scheduler& s, unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
        s.fibers[i].state = RUNNABLE;
        s.fibers[i].line = -1;
    }
    const int kind = g_launch->opt->schedule;
    for (unsigned i = 0; i < n; ++i) s.order[i] = kind == 1 ? n - 1 - i : i;
    if (kind == 2) s.shuffle(n);
    for (;;) {
        for (unsigned k = 0; k < n; ++k) {
            Fiber& f = s.fibers[s.order[k]];
            if (f.state != RUNNABLE) continue;
            resume(f);
            if (f.state == FAILED) return false;
        }
        unsigned waiting = 0, finished = 0;
        int line = -1;
        bool mixed = false;
        for (unsigned i = 0; i < n; ++i) {
            const Fiber& f = s.fibers[i];
            if (f.state == AT_BARRIER) {
                if (waiting++ == 0) line = f.line;
                else if (f.line != line) mixed = true;
            } else if (f.state == FINISHED) {
                ++finished;
            }
        }
        if (finished == n) return true;
        if (mixed || finished) {
            char msg[256];
            std::snprintf(msg, sizeof msg,
                          mixed ? "divergent __syncthreads(): threads of block (%u,%u,%u) wait at different barriers"
                                : "__syncthreads() at this line is not reached by every thread of block (%u,%u,%u) "
                                  "(some threads returned)",
                          g_launch->bid.x, g_launch->bid.y, g_launch->bid.z);
            report(CUCPU_EBARRIER, msg, line);
            return false;
        }
        for (unsigned i = 0; i < n; ++i) s.fibers[i].state = RUNNABLE;
        if (kind == 2) s.shuffle(n);
    }
}

inline int run_grid(unsigned n) {
    Scheduler s;
    s.rng = g_launch->opt->seed;
    s.fibers = new Fiber[n];
    s.order = new unsigned[n];
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = s.fibers[i];
        if (!f.stack.alloc(g_launch->opt->stack_bytes)) {
            report(CUCPU_EINTERNAL, "out of memory for fiber stacks");
            return CUCPU_EINTERNAL;
        }
        f.tid = thread_of(i);
        f.started = false;
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = f.stack.ptr;
        f.uc.uc_stack.ss_size = g_launch->opt->stack_bytes;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, fiber_main, 0);
    }
    g_sched = &s;
    const unsigned long long blocks = (unsigned long long)g_launch->grid.x * g_launch->grid.y * g_launch->grid.z;
    int rc = CUCPU_OK;
    for (unsigned long long b = 0; b < blocks; ++b) {
        set_block(b);
        poison_shared();
        if (!run_block(s, n)) {
            cucpu_report* r = g_launch->rep;
            const uint3 bid = g_launch->bid;
            r->block[0] = bid.x; r->block[1] = bid.y; r->block[2] = bid.z;
            if (s.cur) { r->thread[0] = s.cur->tid.x; r->thread[1] = s.cur->tid.y; r->thread[2] = s.cur->tid.z; }
            r->have_thread = r->code == CUCPU_ETRAP;
            rc = r->code;
            break;
        }
    }
    g_sched = nullptr;
    return rc;
}

#define threadIdx (::cucpu::cur_tid())
#define __syncthreads() ::cucpu::barrier(__LINE__)

#else
// =============================== thread mode =================================================
inline thread_local uint3 tl_tid;
inline std::barrier<>* g_barrier = nullptr;

inline void barrier(int) { g_barrier->arrive_and_wait(); }
[[noreturn]] inline void trap(int line) {
    report(CUCPU_ETRAP, "__trap() called in kernel code", line);
    std::fflush(nullptr);
    _exit(71);   // cannot unwind one OS thread out of a barrier protocol; isolated runs only
}
inline const uint3& cur_tid() { return tl_tid; }

inline int run_grid(unsigned n) {
    const unsigned long long blocks = (unsigned long long)g_launch->grid.x * g_launch->grid.y * g_launch->grid.z;
    std::barrier<> bar(n);
    g_barrier = &bar;
    std::vector<std::thread> ts;
    ts.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
        ts.emplace_back([&, i] {
            tl_tid = thread_of(i);
            tl_fault_tid = &tl_tid;
            for (unsigned long long b = 0; b < blocks; ++b) {
                if (i == 0) { set_block(b); poison_shared(); }
                bar.arrive_and_wait();             // block set up
                g_launch->invoke(g_launch->fn, g_launch->args);
                bar.arrive_and_wait();             // whole block done before the next one starts
            }
        });
    }
    for (auto& t : ts) t.join();
    g_barrier = nullptr;
    return CUCPU_OK;
}

#define threadIdx (::cucpu::cur_tid())
#define __syncthreads() ::cucpu::barrier(__LINE__)
#endif

inline int launch(dim3 grid, dim3 block, size_t smem, void (*invoke)(void*, void**), void* fn, void** args,
                  const cucpu_options* opt, cucpu_report* rep) {
    Launch L;
    L.grid = grid; L.block = block; L.smem = smem; L.opt = opt; L.rep = rep;
    L.invoke = invoke; L.fn = fn; L.args = args;
    g_launch = &L;
    std::memset(rep, 0, sizeof *rep);
    const unsigned long long n = (unsigned long long)block.x * block.y * block.z;
    char msg[256];
    int rc = CUCPU_OK;
    GuardedMem dyn;
    if (n == 0 || n > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
        std::snprintf(msg, sizeof msg, "invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u)",
                      grid.x, grid.y, grid.z, block.x, block.y, block.z);
        report(CUCPU_EBADLAUNCH, msg);
        rc = CUCPU_EBADLAUNCH;
    } else if (static_smem_bytes() + smem > opt->smem_limit) {
        std::snprintf(msg, sizeof msg, "too much shared memory: %zu static + %zu dynamic bytes > limit %llu",
                      static_smem_bytes(), smem, (unsigned long long)opt->smem_limit);
        report(CUCPU_EBADLAUNCH, msg);
        rc = CUCPU_EBADLAUNCH;
    } else {
        if (smem) {
            dyn.alloc((smem + 15) / 16 * 16);
            L.dyn_smem = dyn.ptr;
            rep->smem_begin = (uint64_t)(uintptr_t)dyn.ptr;
            rep->smem_end = rep->smem_begin + (smem + 15) / 16 * 16;
        }
        if (opt->isolated) install_fault_handlers();
        rc = run_grid((unsigned)n);
    }
    g_launch = nullptr;
    return rc;
}

// ---- kernel parameters: cuLaunchKernel style, args[i] points at the value of parameter i ----
template <class... A>
struct Invoker {
    template <size_t... I>
    static void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
        k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
    }
    static void invoke(void* fn, void** args) {
        call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
    }
};

// One code per parameter: p / P pointer (to const), iN / uN integer of N bytes, fN float, b1 bool.
template <class T>
constexpr void type_code(char*& s) {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_pointer_t<U>;
        *s++ = std::is_const_v<E> ? 'P' : 'p';
        if constexpr (std::is_void_v<E>) *s++ = '1';
        else *s++ = alignof(E) >= 16 ? 'G' : (char)('0' + alignof(E));   // pointee alignment
    } else if constexpr (std::is_same_v<U, bool>) {
        *s++ = 'b'; *s++ = '1';
    } else if constexpr (std::is_floating_point_v<U>) {
        *s++ = 'f'; *s++ = (char)('0' + sizeof(U));
    } else if constexpr (std::is_integral_v<U>) {
        *s++ = std::is_signed_v<U> ? 'i' : 'u'; *s++ = (char)('0' + sizeof(U));
    } else {
        *s++ = '?'; *s++ = '0';
    }
    *s++ = ',';
}
template <class... A>
const char* signature(void (*)(A...)) {
    static char buf[3 * sizeof...(A) + 1] = {};
    if (!buf[0] && sizeof...(A)) {
        char* s = buf;
        (type_code<A>(s), ...);
        *s = 0;
    }
    return buf;
}
template <class... A>
constexpr auto invoker_of(void (*)(A...)) { return &Invoker<A...>::invoke; }

}  // namespace cucpu

#define blockIdx (::cucpu::g_launch->bid)
#define blockDim (::cucpu::g_launch->block)
#define gridDim (::cucpu::g_launch->grid)
#define __trap() ::cucpu::trap(__LINE__)

// CUDA declares its atomics for concrete types, so arguments convert implicitly: the value
// parameters are non-deduced here for the same effect.
// ---- device functions (the subset the project's kernels use, plus common neighbours) -------
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int sh) {
    return (unsigned int)(((((unsigned long long)hi << 32) | lo) << (sh & 31)) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int sh) {
    return (unsigned int)((((unsigned long long)hi << 32) | lo) >> (sh & 31));
}
template <class T>
inline T __ldg(const T* p) { return *p; }
// CUDA overloads min/max for every arithmetic pair; the usual conversions give the result type.
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> inline T atomicAdd(T* p, std::type_identity_t<T> v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicSub(T* p, std::type_identity_t<T> v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicOr(T* p, std::type_identity_t<T> v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicAnd(T* p, std::type_identity_t<T> v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicExch(T* p, std::type_identity_t<T> v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicCAS(T* p, std::type_identity_t<T> expected, std::type_identity_t<T> v) {
    __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
template <class T> inline T atomicMax(T* p, std::type_identity_t<T> v) {
    T o = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (o < v && !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return o;
}
template <class T> inline T atomicMin(T* p, std::type_identity_t<T> v) {
    T o = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < o && !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return o;
}

// ---- exported entry points, one pair per kernel ---------------------------------------------
#define CUCPU_EXPORT(k)                                                                              \
    extern "C" int cucpu_launch_##k(const unsigned* dims, size_t smem, void** args,                  \
                                    const cucpu_options* opt, cucpu_report* rep) {                   \
        return ::cucpu::launch(dim3(dims[0], dims[1], dims[2]), dim3(dims[3], dims[4], dims[5]), smem, \
                               ::cucpu::invoker_of(k), reinterpret_cast<void*>(&k), args, opt, rep); \
    }                                                                                                \
    extern "C" const char* cucpu_signature_##k() { return ::cucpu::signature(k); }
