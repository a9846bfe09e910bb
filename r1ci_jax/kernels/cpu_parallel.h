// Parallel loop for the CPU FFI kernels: chunks of work shared by XLA's intra-op thread
// pool and the calling thread.
//
// Every thread (the caller included) takes chunks from one atomic counter, so the
// caller waits only for chunks another thread has already started: it never waits on
// a task still queued behind busy pool threads (no deadlock when the pool is saturated).
// A helper that starts after all chunks are taken finds none and returns; it keeps
// the shared counter alive, never the kernel's buffers.
#ifndef R1CI_JAX_KERNELS_CPU_PARALLEL_H_
#define R1CI_JAX_KERNELS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace r1ci {

// Calls run_chunk(c) once for every c in [0, num_chunks), on up to pool.num_threads()
// threads; returns when all calls have returned.
template <typename RunChunk>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t num_chunks, const RunChunk& run_chunk) {
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  auto counters = std::make_shared<Counters>();
  auto drain = [counters, num_chunks, &run_chunk] {
    for (int64_t c = counters->next.fetch_add(1); c < num_chunks; c = counters->next.fetch_add(1)) {
      run_chunk(c);
      counters->finished.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    // A helper may start after this function returned; it then takes no chunk and
    // never calls run_chunk (this function returns only once every taken chunk finished).
    auto task = drain;
    pool.Schedule(std::move(task));
  }
  drain();
  while (counters->finished.load(std::memory_order_acquire) < num_chunks) std::this_thread::yield();
}

}  // namespace r1ci

#endif  // R1CI_JAX_KERNELS_CPU_PARALLEL_H_
