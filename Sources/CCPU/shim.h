// What the CPU can run, asked of the CPU itself (cpuid, xgetbv): header-only, no library to link.
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

// 1 when the CPU and the OS support what LLVM may emit for ordinary code compiled with -target-cpu haswell, as
// StarlingKernelsAVX2 is: SSE3 to SSE4.2, POPCNT, CMPXCHG16B, AVX, AVX2, FMA, BMI1, BMI2, F16C, LZCNT, MOVBE, and
// the AVX register state saved by the OS.
static inline int starling_cpu_supports_haswell(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned leaf1 = (1u << 0) | (1u << 9) | (1u << 12) | (1u << 13) | (1u << 19) | (1u << 20) | (1u << 22)
                         | (1u << 23) | (1u << 27) | (1u << 28) | (1u << 29);
    // SSE3, SSSE3, FMA, CX16, SSE4.1, SSE4.2, MOVBE, POPCNT, OSXSAVE, AVX, F16C
    if ((c & leaf1) != leaf1) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0;   // XMM and YMM state enabled by the OS
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const unsigned bmi1 = 1u << 3, avx2 = 1u << 5, bmi2 = 1u << 8;
    if ((b & (bmi1 | avx2 | bmi2)) != (bmi1 | avx2 | bmi2)) return 0;
    if (!__get_cpuid(0x80000001, &a, &b, &c, &d)) return 0;
    return (c & (1u << 5)) != 0;   // LZCNT (ABM)
#else
    return 0;
#endif
}

// 1 when cpuid's vendor string is "GenuineIntel": Intel's AVX-512 cores run 512-bit FMAs at full width, where AMD's
// Zen 4 runs them as two 256-bit halves, which moves the point where Winograd's fewer multiplications pay
// (ConvGeometry.winogradPays).
static inline int starling_cpu_is_intel(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;   // "Genu" "ineI" "ntel"
#else
    return 0;
#endif
}

// 1 when, beyond Haswell's set, the CPU and the OS support what LLVM may emit for ordinary code compiled with
// -target-cpu skylake-avx512, as StarlingKernelsAVX512 is: AVX-512 F, CD, BW, DQ and VL (the x86-64-v4 set), and the
// opmask and ZMM register state saved by the OS (XCR0 bits 5-7; a kernel may leave them off even where cpuid has AVX-512).
static inline int starling_cpu_supports_avx512(void) {
#if defined(__x86_64__)
    if (!starling_cpu_supports_haswell()) return 0;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const unsigned needed = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);   // F, DQ, CD, BW, VL
    if ((b & needed) != needed) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xE6) == 0xE6;   // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM
#else
    return 0;
#endif
}

// The processor's brand string (cpuid leaves 0x80000002-4) into out[49], and its display family and model; an empty
// string and zeros where cpuid does not say.
static inline void starling_cpu_identity(char out[49], unsigned *family, unsigned *model) {
    out[0] = 0; *family = 0; *model = 0;
#if defined(__x86_64__)
    unsigned r[4];
    if (__get_cpuid(1, &r[0], &r[1], &r[2], &r[3])) {
        unsigned base = (r[0] >> 8) & 0xF, baseModel = (r[0] >> 4) & 0xF;
        *family = base == 0xF ? base + ((r[0] >> 20) & 0xFF) : base;
        *model = (base == 0x6 || base == 0xF) ? (((r[0] >> 16) & 0xF) << 4) + baseModel : baseModel;
    }
    if (!__get_cpuid(0x80000000, &r[0], &r[1], &r[2], &r[3]) || r[0] < 0x80000004) return;
    for (unsigned leaf = 0; leaf < 3; leaf++) {
        __get_cpuid(0x80000002 + leaf, &r[0], &r[1], &r[2], &r[3]);
        __builtin_memcpy(out + 16 * leaf, r, 16);
    }
    out[48] = 0;
#endif
}

// The widest vector instruction set the CPU and the OS both support, for choosing a GEMM (GEMMSelection):
// 0 SSE2 (baseline x86-64) or not x86; 1 SSE3; 2 AVX; 3 the Haswell set above (AVX2 with FMA); 4 the AVX-512 set
// above (Skylake-X and later, Zen 4), what OpenBLAS's SkylakeX kernels and oneDNN's avx512_core need. The top two
// levels are the kernel modules' own tests, so the GEMM and the element-wise kernels never disagree about a CPU.
static inline int starling_cpu_vector_isa(void) {
#if defined(__x86_64__)
    if (starling_cpu_supports_avx512()) return 4;
    if (starling_cpu_supports_haswell()) return 3;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & 1u)) return 0;   // SSE3
    const unsigned osxsave = 1u << 27, avx = 1u << 28;
    if ((c & (osxsave | avx)) != (osxsave | avx)) return 1;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6 ? 2 : 1;                                 // XMM and YMM state
#else
    return 0;
#endif
}

// A word shared between threads, read and written whole with acquire and release order: what a thread spinning on
// another's progress reads (InProcessGroup's rendezvous), without a lock on every look.
static inline long long starling_load_acquire(const long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void starling_store_release(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

// Tells the core this thread is spinning (x86 `pause`), so that it yields to its hyper-thread sibling and leaves the
// loop without a memory-order flush.
static inline void starling_spin_pause(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

// Sets this thread's MXCSR flush-to-zero and denormals-are-zero bits and returns the MXCSR to restore: the
// optimizers' passes run between the two (`KernelDispatch.withSubnormalsFlushed`). The "memory" clobbers keep the
// compiler from moving the loop's loads and stores across the switch. 0 and a no-op where there is no MXCSR.
static inline unsigned starling_flush_subnormals_begin(void) {
#if defined(__x86_64__)
    unsigned csr;
    __asm__ volatile("stmxcsr %0" : "=m"(csr) : : "memory");
    unsigned flushed = csr | 0x8040u;   // FTZ (bit 15) and DAZ (bit 6)
    __asm__ volatile("ldmxcsr %0" : : "m"(flushed) : "memory");
    return csr;
#else
    return 0;
#endif
}

static inline void starling_flush_subnormals_end(unsigned csr) {
#if defined(__x86_64__)
    __asm__ volatile("ldmxcsr %0" : : "m"(csr) : "memory");
#else
    (void)csr;
#endif
}

// How many processors the calling thread may run on: the bits of its affinity mask (taskset, mpirun's --bind-to, a
// cgroup's cpuset), through the raw system call so that no _GNU_SOURCE is needed; 0 where the system does not say
// (not Linux, or more than 4,096 processors). `ProcessInfo.activeProcessorCount` counts the machine's online ones.
static inline int starling_affinity_processor_count(void) {
#if defined(__linux__)
    unsigned long long mask[64] = {0};
    long bytes = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
    if (bytes <= 0) return 0;
    int count = 0;
    for (long word = 0; word < bytes / 8; word++) count += __builtin_popcountll(mask[word]);
    return count;
#else
    return 0;
#endif
}

// The processors in the calling thread's affinity mask, in increasing order, into `out` (at most `capacity`); returns
// how many there are (0 where the system does not say). Replicas on threads bind to these, so a process that taskset or
// mpirun's --bind-to narrowed keeps to what it was given.
static inline int starling_affinity_processors(int *out, int capacity) {
#if defined(__linux__)
    unsigned long long mask[64] = {0};
    long bytes = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
    if (bytes <= 0) return 0;
    int count = 0;
    for (long word = 0; word < bytes / 8; word++)
        for (int bit = 0; bit < 64; bit++)
            if (mask[word] >> bit & 1ull) { if (count < capacity) out[count] = (int)(word * 64 + bit); count++; }
    return count;
#else
    (void)out; (void)capacity;
    return 0;
#endif
}

// Restricts the calling thread (not the process) to the `count` processors in `cpus`; 0 on success, -1 where refused
// or unsupported (the thread then keeps its mask, which costs only speed).
static inline int starling_bind_thread(const int *cpus, int count) {
#if defined(__linux__)
    unsigned long long mask[64] = {0};
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= 64 * 64) return -1;
        mask[cpus[i] / 64] |= 1ull << (cpus[i] % 64);
    }
    return syscall(SYS_sched_setaffinity, 0, sizeof(mask), mask) == 0 ? 0 : -1;
#else
    (void)cpus; (void)count;
    return -1;
#endif
}

// The processor the calling thread runs on now (-1 where unknown): a sample for diagnostics, stale as soon as read.
static inline int starling_current_processor(void) {
#if defined(__linux__)
    unsigned cpu = 0;
    return syscall(SYS_getcpu, &cpu, (void *)0, (void *)0) == 0 ? (int)cpu : -1;
#else
    return -1;
#endif
}

// Names the calling thread where the OS shows it (/proc/PID/task/TID/comm, `top -H`, perf's comm column): Linux keeps
// the first 15 bytes. Foundation's `Thread.name` stays inside the process on Linux. A no-op elsewhere.
static inline void starling_name_current_thread(const char *name) {
#if defined(__linux__)
    syscall(SYS_prctl, 15 /* PR_SET_NAME */, name, 0, 0, 0);
#endif
}

// Asks for the cache lines of [p, p + bytes) ahead of their use: a hint (no fault on any address, no effect on a
// value). The resident split's gather (`PixelGather`) reads rows at random places of tens of MB, each a miss to memory.
static inline void starling_prefetch_range(const void *p, long bytes) {
    unsigned long line = (unsigned long)p & ~63ul, end = (unsigned long)p + (unsigned long)bytes;
    for (; line < end; line += 64) __builtin_prefetch((const void *)line, 0, 3);
}
