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
