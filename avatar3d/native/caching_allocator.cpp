// A caching CPU allocator for torch: large blocks are kept on free and handed out
// again, instead of going back to the OS.
//
// Why: torch allocates CPU tensors with posix_memalign(64). With glibc, blocks
// over the mmap threshold (32 MB at most) are mmapped and unmapped every time, and
// smaller aligned blocks fragment the heap so that the next one of the same size
// often comes from fresh pages. Either way every page is faulted in and zeroed by
// the kernel again: a config-B training step of the GAN faulted in 7 GB this way
// (~1.7 million page faults, about a sixth of the step). The renderer's activations
// have the same few sizes every iteration, so an exact-size cache hits nearly always.
//
// Blocks of at least kMinCached bytes are rounded up (to 64 KB under 1 MB, to
// 1 MB above: at most ~6% slack) and cached per size; smaller ones are allocated and freed directly (glibc serves
// those well). The cache holds at most `limit` bytes of free blocks; past that a
// freed block goes back to the OS. Every block carries a 64-byte header with its
// size, so one plain deleter serves all of them (raw_allocate / raw_deallocate,
// which oneDNN uses for scratchpads, too).

#include <torch/extension.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kHeader = 64;  // keeps the 64-byte alignment torch expects
constexpr size_t kMinCached = size_t(64) << 10;  // glibc mmaps blocks from 128 KB up

inline size_t rounded(size_t bytes) {
  const size_t step = bytes < (size_t(1) << 20) ? (size_t(64) << 10) : (size_t(1) << 20);
  return (bytes + step - 1) / step * step;
}

struct Cache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // total size -> raw blocks
  size_t cached_bytes = 0;
  size_t limit = 0;
  uint64_t hits = 0, misses = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during interpreter shutdown
  return *c;
}

void delete_block(void* data) {
  void* raw = static_cast<char*>(data) - kHeader;
  const size_t total = *static_cast<size_t*>(raw);
  Cache& c = cache();
  if (total >= kMinCached) {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.cached_bytes + total <= c.limit) {
      c.free_blocks[total].push_back(raw);
      c.cached_bytes += total;
      return;
    }
  }
  c10::free_cpu(raw);
}

struct CachingCPUAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    Cache& c = cache();
    const bool cached = nbytes + kHeader >= kMinCached;
    const size_t total = cached ? rounded(nbytes + kHeader) : nbytes + kHeader;
    void* raw = nullptr;
    if (cached) {
      std::lock_guard<std::mutex> lock(c.mutex);
      auto it = c.free_blocks.find(total);
      if (it != c.free_blocks.end() && !it->second.empty()) {
        raw = it->second.back();
        it->second.pop_back();
        c.cached_bytes -= total;
        ++c.hits;
      } else {
        ++c.misses;
      }
    }
    if (raw == nullptr) raw = c10::alloc_cpu(total);
    *static_cast<size_t*>(raw) = total;
    void* data = static_cast<char*>(raw) + kHeader;
    return {data, data, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachingCPUAllocator* g_allocator = nullptr;

}  // namespace

// Installs the caching allocator as torch's CPU allocator (once); later calls only change the limit.
void install(int64_t limit_bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = static_cast<size_t>(std::max<int64_t>(0, limit_bytes));
  }
  if (g_allocator != nullptr) return;
  g_allocator = new CachingCPUAllocator();
  c10::SetCPUAllocator(g_allocator, /*priority=*/1);
}

// Frees every cached block; returns the bytes released.
int64_t empty_cache() {
  Cache& c = cache();
  std::vector<void*> blocks;
  int64_t released = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto& kv : c.free_blocks) {
      for (void* raw : kv.second) blocks.push_back(raw);
      released += static_cast<int64_t>(kv.first * kv.second.size());
    }
    c.free_blocks.clear();
    c.cached_bytes = 0;
  }
  for (void* raw : blocks) c10::free_cpu(raw);
  return released;
}

// (installed, cached bytes, limit, hits, misses)
std::vector<int64_t> stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {g_allocator != nullptr && c10::GetCPUAllocator() == g_allocator, static_cast<int64_t>(c.cached_bytes),
          static_cast<int64_t>(c.limit), static_cast<int64_t>(c.hits), static_cast<int64_t>(c.misses)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("install", &install, "install the caching CPU allocator with a limit on cached free bytes");
  m.def("empty_cache", &empty_cache, "free every cached block");
  m.def("stats", &stats, "(installed, cached_bytes, limit, hits, misses)");
}
