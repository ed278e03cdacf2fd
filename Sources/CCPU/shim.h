// What the CPU can run, asked of the CPU itself (cpuid, xgetbv): header-only, no library to link.
#if defined(__x86_64__)
#include <cpuid.h>
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
