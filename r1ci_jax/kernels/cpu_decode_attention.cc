// Ragged GQA decode attention for XLA:CPU, registered as the FFI target
// "r1ci_decode_attention_f32"; the semantics of decode_attention.py's reference:
//
//   q: f32[B, H, Dh], k_cache, v_cache: f32[L, B, S, K, Dh], lengths: s32[B], layer: s32[1]
//   out[b, h] = softmax_s(scale * q[b, h] . k[layer, b, s, h / G]) @ v[layer, b, s, h / G]
//   over s < lengths[b] (G = H / K query heads share a kv head); zeros where lengths[b] == 0.
//
// One work item per (row, kv head): its G query rows score every live slot, take the
// max, exponentiate, and sum the V rows weighted by the probabilities (each V row read
// once for all G; scratch for the probabilities is allocated once per call). Only live slots are read, straight from
// the stacked cache in its own layout: XLA's plain-JAX version (`decode_attention_blocked`)
// copies and transposes every KV block it visits. Work items run on XLA's intra-op
// threads (cpu_parallel.h).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float UnalignedVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));

float Dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  Vec acc = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    acc += *reinterpret_cast<const UnalignedVec*>(a + i) * *reinterpret_cast<const UnalignedVec*>(b + i);
  float sum = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) sum += acc[lane];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

struct Problem {
  const float *q, *k, *v;
  const int32_t* lengths;
  float* out;
  float* scratch;  // per work item: [G, S] probabilities, [G, Dh] accumulators, [G] maxima
  int64_t layer, B, H, S, K, Dh;
  float scale;

  int64_t ScratchPerItem() const { return (H / K) * (S + Dh + 1); }

  // Row b, kv head kh: query heads kh*G .. kh*G + G - 1.
  void RunItem(int64_t item) const {
    const int64_t b = item / K, kh = item % K, G = H / K;
    const int64_t length = std::clamp<int64_t>(lengths[b], 0, S);
    const float* qg = q + (b * H + kh * G) * Dh;
    float* og = out + (b * H + kh * G) * Dh;
    if (length == 0) {
      std::memset(og, 0, G * Dh * sizeof(float));
      return;
    }
    const int64_t slot_stride = K * Dh;
    const float* k_row = k + ((layer * B + b) * S * K + kh) * Dh;
    const float* v_row = v + ((layer * B + b) * S * K + kh) * Dh;
    float* probs = scratch + item * ScratchPerItem();  // [G, length]: scores, then exp(score - max)
    float* acc = probs + G * S;                         // [G, Dh]
    float* max_score = acc + G * Dh;                    // [G]

    std::fill(max_score, max_score + G, -std::numeric_limits<float>::infinity());
    for (int64_t s = 0; s < length; ++s) {  // slot-major: each K row is read once for all G
      const float* ks = k_row + s * slot_stride;
      for (int64_t g = 0; g < G; ++g) {
        const float score = Dot(qg + g * Dh, ks, Dh) * scale;
        probs[g * length + s] = score;
        max_score[g] = std::max(max_score[g], score);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      // All scores -inf: shift by 0 so every weight is 0 and the row gives zeros, as in
      // the reference (exp(-inf - -inf) would be NaN).
      const float shift = std::isfinite(max_score[g]) ? max_score[g] : 0.0f;
      float* p = probs + g * length;
      for (int64_t s = 0; s < length; ++s) p[s] = std::exp(p[s] - shift);
    }
    std::fill(acc, acc + G * Dh, 0.0f);
    for (int64_t s = 0; s < length; ++s) {
      const float* vs = v_row + s * slot_stride;
      for (int64_t g = 0; g < G; ++g) {
        const float p = probs[g * length + s];
        float* a = acc + g * Dh;
        for (int64_t d = 0; d < Dh; ++d) a[d] += p * vs[d];
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float denom = 0.0f;
      for (int64_t s = 0; s < length; ++s) denom += probs[g * length + s];
      for (int64_t d = 0; d < Dh; ++d) og[g * Dh + d] = denom > 0.0f ? acc[g * Dh + d] / denom : 0.0f;
    }
  }
};

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> lengths,
                               ffi::Buffer<ffi::S32> layer, float scale, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions();
  bool ok = qd.size() == 3 && kd.size() == 5 && v.dimensions().size() == 5 && lengths.element_count() == qd[0] &&
            layer.element_count() == 1;
  for (size_t i = 0; ok && i < 5; ++i) ok = kd[i] == v.dimensions()[i];
  ok = ok && kd[1] == qd[0] && kd[4] == qd[2] && kd[3] > 0 && qd[1] % kd[3] == 0;
  if (!ok)
    return ffi::Error::InvalidArgument("r1ci_decode_attention_f32: q " + Shape(qd) + ", k " + Shape(kd) +
                                       ", v " + Shape(v.dimensions()) +
                                       " do not fit q [B, H, Dh], k/v [L, B, S, K, Dh] with H % K == 0");
  const int64_t L = kd[0], layer_index = layer.typed_data()[0];
  if (layer_index < 0 || layer_index >= L)
    return ffi::Error::InvalidArgument("r1ci_decode_attention_f32: layer " + std::to_string(layer_index) +
                                       " outside [0, " + std::to_string(L) + ")");
  Problem problem{q.typed_data(), k.typed_data(), v.typed_data(), lengths.typed_data(), out->typed_data(),
                  /*scratch=*/nullptr, layer_index, qd[0], qd[1], kd[2], kd[3], qd[2], scale};
  const int64_t items = problem.B * problem.K;
  std::vector<float> scratch;  // allocated here, where a failure can still be reported
  try {
    scratch.resize(items * problem.ScratchPerItem());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("r1ci_decode_attention_f32: out of memory for " + std::to_string(items) +
                                " x " + std::to_string(problem.ScratchPerItem()) + " floats of scratch");
  }
  problem.scratch = scratch.data();
  r1ci::ParallelFor(pool, items, [&problem](int64_t item) { problem.RunItem(item); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(R1ciDecodeAttentionF32, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k_cache
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v_cache
                                  .Arg<ffi::Buffer<ffi::S32>>()   // lengths
                                  .Arg<ffi::Buffer<ffi::S32>>()   // layer
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out
