// The widest vector instruction set the CPU and the OS both support, for choosing a GEMM (GEMMSelection): cpuid for
// the instructions, xgetbv for the register state the OS saves on a context switch (a CPU with AVX-512 under an OS
// that does not save the ZMM registers must not run AVX-512 code).
#if defined(__x86_64__)
#include <cpuid.h>
#endif

// 0: SSE2 (baseline x86-64) or not x86; 1: SSE3; 2: AVX; 3: AVX2 with FMA; 4: AVX-512 F, CD, BW, DQ and VL (Skylake-X
// and later, Zen 4), the set OpenBLAS's SkylakeX kernels and oneDNN's avx512_core need.
static inline int starling_cpu_vector_isa(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & 1u)) return 0;                                   // SSE3
    const unsigned osxsave = 1u << 27, avx = 1u << 28, fma = 1u << 12;
    if ((c & (osxsave | avx)) != (osxsave | avx)) return 1;
    const int hasFMA = (c & fma) != 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 1;                               // XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 2;
    const unsigned avx2 = 1u << 5;
    if (!(b & avx2) || !hasFMA) return 2;
    const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);   // F, DQ, CD, BW, VL
    if ((b & avx512) != avx512) return 3;
    if ((lo & 0xe6) != 0xe6) return 3;                         // opmask and ZMM state
    return 4;
#else
    return 0;
#endif
}
