// Decode-sized fp32 matmul for XLA:CPU, registered as the FFI target "r1ci_packed_matmul_f32".
//
//   y[b, o] = sum_k x[b, k] * w[o, k]      x: f32[B, K], y: f32[B, O]
//
// The weight arrives packed as panels of 16 output rows, w_packed: f32[P, K, 16] with
// P = ceil(O / 16) (rows past O are zero; `cpu_matmul.pack` builds it once). At decode
// batch sizes (B <= ~16) a matmul reads each weight once and does B multiply-adds
// per weight, so the work is a stream over the panels: for every k, one 16-wide
// weight vector times B broadcast inputs, accumulated in registers (2 panels x 8
// rows = 16 vector accumulators). The panel order makes that stream contiguous and
// needs no horizontal sums. XLA's own dot (YNNPACK) reached ~18 GB/s of weights at
// B = 8 on a 2-core AVX-512 VM; this loop is bound by the FMA units (one 16-wide
// FMA per weight vector and row) and reaches 27-33 GB/s there (bench/decode_roofline.py).
//
// Work is split into chunks of panel pairs run by XLA's intra-op threads and the
// calling thread (cpu_parallel.h).
//
// cpu_ffi.py compiles this file on first use with -O3 -march=native (the vector type
// below becomes AVX-512, AVX2 or NEON code for the CPU that runs it); cpu_matmul.py
// falls back to XLA's dot when it cannot.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kPanel = 16;        // output rows per packed panel
constexpr int kRowsPerTile = 8;   // x rows per register tile
constexpr int kPanelsPerTile = 2;  // 2 x 8 = 16 vector accumulators

typedef float Vec __attribute__((vector_size(kPanel * sizeof(float))));
// The same vector read from memory with only float alignment.
typedef float UnalignedVec __attribute__((vector_size(kPanel * sizeof(float)), aligned(alignof(float))));

// rows x num_panels outputs: y[b, panel*16 + j] for b < rows, from x rows [rows, K].
template <int Rows, int NumPanels>
void Tile(const float* __restrict x, int64_t K, const float* __restrict w, float* __restrict y,
          int64_t y_stride, int64_t first_col, int64_t O) {
  Vec acc[NumPanels][Rows] = {};
  for (int64_t k = 0; k < K; ++k) {
    Vec wk[NumPanels];
    for (int p = 0; p < NumPanels; ++p) wk[p] = *reinterpret_cast<const UnalignedVec*>(w + (p * K + k) * kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const float xr = x[r * K + k];
      for (int p = 0; p < NumPanels; ++p) acc[p][r] += wk[p] * xr;
    }
  }
  for (int p = 0; p < NumPanels; ++p) {
    const int64_t col = first_col + p * kPanel;
    const int64_t width = std::min<int64_t>(kPanel, O - col);  // the last panel may be partial
    for (int r = 0; r < Rows; ++r) std::memcpy(y + r * y_stride + col, &acc[p][r], width * sizeof(float));
  }
}

template <int NumPanels>
void TileAnyRows(int rows, const float* x, int64_t K, const float* w, float* y, int64_t y_stride,
                 int64_t first_col, int64_t O) {
  switch (rows) {
#define R1CI_ROWS_CASE(n) \
  case n:                 \
    return Tile<n, NumPanels>(x, K, w, y, y_stride, first_col, O);
    R1CI_ROWS_CASE(1) R1CI_ROWS_CASE(2) R1CI_ROWS_CASE(3) R1CI_ROWS_CASE(4)
    R1CI_ROWS_CASE(5) R1CI_ROWS_CASE(6) R1CI_ROWS_CASE(7) R1CI_ROWS_CASE(8)
#undef R1CI_ROWS_CASE
  }
}

struct Problem {
  const float* x;
  const float* w;
  float* y;
  int64_t B, K, O, num_panels, panels_per_chunk, num_chunks;

  // Panels [chunk * panels_per_chunk, ...) for every row of x. Rows go in tiles of 8
  // inside the panel loop, so with more than 8 rows a panel pair (2 x K x 64 bytes) is
  // read from memory once and from cache for the other tiles.
  void RunChunk(int64_t chunk) const {
    const int64_t first = chunk * panels_per_chunk;
    const int64_t last = std::min(num_panels, first + panels_per_chunk);
    for (int64_t p = first; p < last; p += kPanelsPerTile) {
      const bool pair = p + kPanelsPerTile <= last;
      for (int64_t b = 0; b < B; b += kRowsPerTile) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowsPerTile, B - b));
        if (pair)
          TileAnyRows<kPanelsPerTile>(rows, x + b * K, K, w + p * K * kPanel, y + b * O, O, p * kPanel, O);
        else
          TileAnyRows<1>(rows, x + b * K, K, w + p * K * kPanel, y + b * O, O, p * kPanel, O);
      }
    }
  }
};

ffi::Error PackedMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2)
    return ffi::Error::InvalidArgument("r1ci_packed_matmul_f32: expected x [B, K], w [P, K, 16], y [B, O]");
  const int64_t B = xd[0], K = xd[1], P = wd[0], O = yd[1];
  if (wd[1] != K || wd[2] != kPanel || yd[0] != B || (O + kPanel - 1) / kPanel != P)
    return ffi::Error::InvalidArgument(
        "r1ci_packed_matmul_f32: shapes x [" + std::to_string(B) + ", " + std::to_string(K) + "], w [" +
        std::to_string(P) + ", " + std::to_string(wd[1]) + ", " + std::to_string(wd[2]) + "], y [" +
        std::to_string(yd[0]) + ", " + std::to_string(O) + "] do not fit w = pack(W [O, K])");
  if (B == 0 || O == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(y->typed_data(), 0, B * O * sizeof(float));
    return ffi::Error::Success();
  }

  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // ~4 chunks per thread balance uneven threads; an even panel count keeps the pair tile.
  const int64_t panels_per_chunk = std::max<int64_t>(
      kPanelsPerTile, (P + 4 * threads - 1) / (4 * threads) / kPanelsPerTile * kPanelsPerTile);
  const Problem problem{x.typed_data(), w.typed_data(), y->typed_data(), B, K, O, P, panels_per_chunk,
                        (P + panels_per_chunk - 1) / panels_per_chunk};
  r1ci::ParallelFor(pool, problem.num_chunks, [&problem](int64_t chunk) { problem.RunChunk(chunk); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(R1ciPackedMatmulF32, PackedMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
