/* alloc.cu — the caching device allocator behind every CUDA storage.
 *
 * cudaMalloc and cudaFree are slow and synchronise the device, and a
 * training step allocates the same sizes every iteration. So a request is
 * rounded up to a size class and a freed block goes onto its class's free
 * list instead of back to the driver; the next request of that class takes
 * it from there. Once the first step has run, the steady state calls
 * cudaMalloc no more.
 *
 * Size classes: multiples of 512 bytes up to 1 MiB; above, four classes
 * per power of two (2^k times 1, 1.25, 1.5, 1.75), so rounding wastes at
 * most 25%.
 *
 * Streams: every kernel runs on one stream (moe_cuda_stream()), so a block
 * freed here and handed out again is only touched by later work in the same
 * stream order; reuse needs no event. (With more streams, a freed block must
 * record an event on its stream and wait for it before reuse.)
 *
 * When cudaMalloc fails, the cache is emptied and the call retried once.
 * Thread-safe: one mutex around the lists (finalizers free from other
 * threads). */
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../../core/tensor.h"
#include "cuda_internal.h"

namespace {

constexpr size_t kSmallStep = 512;
constexpr size_t kSmallMax = (size_t)1 << 20;

size_t size_class(size_t nbytes)
{
    if (nbytes == 0) nbytes = 1;
    if (nbytes <= kSmallMax) return (nbytes + kSmallStep - 1) / kSmallStep * kSmallStep;
    size_t pow2 = kSmallMax;
    while (pow2 * 2 <= nbytes) pow2 *= 2; /* pow2 <= nbytes < 2 pow2 */
    size_t quarter = pow2 / 4;
    return (nbytes + quarter - 1) / quarter * quarter;
}

struct block_cache {
    std::mutex lock;
    std::unordered_map<size_t, std::vector<void *>> free_lists; /* class → blocks */
    moe_cuda_cache_stats stats{};

    /* Return every cached block to the driver (lock held). */
    void release_all()
    {
        for (auto &kv : free_lists)
            for (void *p : kv.second) {
                cudaFree(p);
                stats.reserved_bytes -= (int64_t)kv.first;
                stats.cached_bytes -= (int64_t)kv.first;
            }
        free_lists.clear();
    }
};

block_cache &cache()
{
    static block_cache *c = new block_cache; /* never destroyed: frees may come at exit */
    return *c;
}

moe_status device_alloc(void **ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    *ptr = nullptr;
    size_t size = size_class(nbytes);
    block_cache &c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    auto it = c.free_lists.find(size);
    if (it != c.free_lists.end() && !it->second.empty()) {
        *ptr = it->second.back();
        it->second.pop_back();
        c.stats.cached_bytes -= (int64_t)size;
        c.stats.cache_hits++;
        return MOE_OK;
    }
    cudaError_t e = cudaMalloc(ptr, size);
    if (e == cudaErrorMemoryAllocation) { /* fragmentation by the cache: give it back, retry */
        cudaGetLastError();
        c.release_all();
        e = cudaMalloc(ptr, size);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        *ptr = nullptr;
        return moe_fail(MOE_ERR_NOMEM, "cuda-alloc", "cudaMalloc of %zu bytes failed: %s", size,
                        cudaGetErrorString(e));
    }
    c.stats.device_mallocs++;
    c.stats.reserved_bytes += (int64_t)size;
    return MOE_OK;
}

void device_free(void *ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    if (!ptr) return;
    size_t size = size_class(nbytes);
    block_cache &c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    c.free_lists[size].push_back(ptr);
    c.stats.cached_bytes += (int64_t)size;
}

const moe_allocator caching_allocator = {"cuda-caching", device_alloc, device_free, nullptr};

} // namespace

/* runtime.cu installs this one in moe_cuda_init. */
const moe_allocator *moe_cuda_caching_allocator(void) { return &caching_allocator; }

extern "C" void moe_cuda_empty_cache(void)
{
    block_cache &c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    c.release_all();
}

extern "C" void moe_cuda_cache_stats_get(moe_cuda_cache_stats *out)
{
    block_cache &c = cache();
    std::lock_guard<std::mutex> guard(c.lock);
    *out = c.stats;
}
