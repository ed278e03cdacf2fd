// oneDNN 2.x (Debian: libdnnl-dev), the convolution library PyTorch runs on CPUs.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>

// oneDNN's Debian build threads with OpenMP (libgomp, loaded with libdnnl): its thread count follows
// omp_set_num_threads, looked up at run time so that nothing needs libgomp's development link.
static inline int starling_omp_set_num_threads(int n) {
    void (*set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (!set) return 0;
    set(n);
    return 1;
}

// omp_get_max_threads on the calling thread (the team a oneDNN call made here would run on), or 0 without libgomp.
static inline int starling_omp_get_max_threads(void) {
    static int (*get)(void) = 0;
    if (!get) get = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    return get ? get() : 0;
}

// Runs fn(context, begin, end) on disjoint ranges covering [0, count) on `threads` threads of oneDNN's own OpenMP
// pool (libgomp's GOMP_parallel), so that Starling's element-wise loops and oneDNN's kernels share one set of threads
// instead of two pools spinning against each other on the same cores. Returns 0, doing nothing, if libgomp is absent.
typedef void (*starling_range_fn)(void *context, long begin, long end);
struct starling_parallel_job { starling_range_fn fn; void *context; long count; int (*thread)(void); int (*threads)(void); };
static void starling_parallel_body(void *raw) {
    struct starling_parallel_job *job = (struct starling_parallel_job *)raw;
    long t = job->thread(), n = job->threads();
    long begin = job->count * t / n, end = job->count * (t + 1) / n;
    if (begin < end) job->fn(job->context, begin, end);
}
static inline int starling_omp_parallel(starling_range_fn fn, void *context, long count, int threads) {
    static void (*parallel)(void (*)(void *), void *, unsigned, unsigned) = 0;
    static int (*thread)(void) = 0, (*team)(void) = 0;
    if (!parallel) {
        thread = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_thread_num");
        team = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_num_threads");
        parallel = (void (*)(void (*)(void *), void *, unsigned, unsigned))dlsym(RTLD_DEFAULT, "GOMP_parallel");
    }
    if (!parallel || !thread || !team) return 0;
    struct starling_parallel_job job = { fn, context, count, thread, team };
    parallel(starling_parallel_body, &job, (unsigned)threads, 0);
    return 1;
}
