// XLA FFI handlers for the CPU over bfloat16 weights, for decoding a few rows (see
// bf16_kernels.py for why and how they are built):
// - Bf16Rows: y = x . w^T for a few float32 rows x (R x I) and a bfloat16 (out, in) matrix w
//   (O x I), in float32;
// - Bf16Take: rows of a bfloat16 table, copied as they are;
// - Bf16Dots, only where the compiler targets AVX512-BF16: y = x . w^T for bfloat16 rows x
//   (R x I, any R) and w (O x I), in float32, by the CPU's bfloat16 dot-product instruction;
// - Bf16Attend, there too: a decoding step's softmax attention of a few query rows.
//
// Bf16Rows: each weight is read once for all R rows and widened to float32 in registers (a
// bfloat16 value is the high half of a float32: exact). Each row keeps kLanes partial sums,
// which the compiler vectorises, added up in a fixed order at the end: the same inputs give
// the same bits.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 32;
constexpr int kMaxRows = 4;
// the weights a chunk of work reads at least (128 KiB): smaller products stay on one thread
constexpr int64_t kMinChunk = 1 << 16;

inline float Widen(uint16_t bits) {
  uint32_t word = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// y[r, o] for the R rows of x and the outputs o in [o0, o1)
template <int R>
void Rows(const float* x, const uint16_t* w, float* y, int64_t in, int64_t out, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint16_t* w_o = w + o * in;
    float sums[R][kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= in; i += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) {
        float weight = Widen(w_o[i + lane]);
        for (int r = 0; r < R; ++r) sums[r][lane] += weight * x[r * in + i + lane];
      }
    }
    for (int r = 0; r < R; ++r) {
      float total = 0;
      for (int lane = 0; lane < kLanes; ++lane) total += sums[r][lane];
      for (int64_t j = i; j < in; ++j) total += Widen(w_o[j]) * x[r * in + j];
      y[r * out + o] = total;
    }
  }
}

void RowsAny(int rows, const float* x, const uint16_t* w, float* y, int64_t in, int64_t out, int64_t o0,
             int64_t o1) {
  switch (rows) {
    case 1: return Rows<1>(x, w, y, in, out, o0, o1);
    case 2: return Rows<2>(x, w, y, in, out, o0, o1);
    case 3: return Rows<3>(x, w, y, in, out, o0, o1);
    default: return Rows<4>(x, w, y, in, out, o0, o1);
  }
}

// The outputs in chunks, taken by whichever thread comes first: the calling thread takes
// chunks too and waits only for chunks another thread has begun, so a pool busy elsewhere
// (or running this call's own caller) delays the product but never blocks it. `product`
// computes the outputs [o0, o1) of every row.
struct Work {
  std::function<void(int64_t, int64_t)> product;
  int64_t out, chunk, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      product(c * chunk, std::min(out, (c + 1) * chunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Runs `product` over the outputs [0, out) in chunks of `align` outputs or a multiple of it,
// each reading at least kMinChunk weights (`weights_each` an output).
void Split(ffi::ThreadPool& pool, int64_t out, int64_t weights_each, int64_t align,
           std::function<void(int64_t, int64_t)> product) {
  auto work = std::make_shared<Work>();
  work->product = std::move(product);
  work->out = out;
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t most = std::max<int64_t>(1, out * weights_each / kMinChunk);
  int64_t chunks = std::min(4 * threads, std::min(most, std::max<int64_t>(1, out / align)));
  work->chunk = ((out + chunks - 1) / chunks + align - 1) / align * align;
  work->chunks = out ? (out + work->chunk - 1) / work->chunk : 0;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
}

ffi::Error Bf16RowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto x_dims = x.dimensions(), w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1])
    return ffi::Error::InvalidArgument("bf16 rows: x must be R x I and w O x I");
  const float* x_data = x.typed_data();
  auto* w_data = reinterpret_cast<const uint16_t*>(w.typed_data());
  float* y_data = y->typed_data();
  int64_t rows = x_dims[0], in = w_dims[1], out = w_dims[0];
  Split(pool, out, in, 1, [=](int64_t o0, int64_t o1) {
    for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows)
      RowsAny(int(std::min<int64_t>(kMaxRows, rows - r0)), x_data + r0 * in, w_data, y_data + r0 * out, in, out,
              o0, o1);
  });
  return ffi::Error::Success();
}

ffi::Error Bf16TakeImpl(ffi::Buffer<ffi::BF16> table, ffi::Buffer<ffi::S32> ids,
                        ffi::ResultBuffer<ffi::BF16> rows) {
  auto dims = table.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("bf16 take: the table must be V x D");
  int64_t count = dims[0], width = dims[1];
  auto* from = reinterpret_cast<const uint16_t*>(table.typed_data());
  auto* to = reinterpret_cast<uint16_t*>(rows->typed_data());
  const int32_t* id = ids.typed_data();
  for (int64_t n = 0; n < int64_t(ids.element_count()); ++n) {
    if (id[n] < 0 || id[n] >= count) return ffi::Error::InvalidArgument("bf16 take: a row id is out of range");
    std::memcpy(to + n * width, from + id[n] * width, width * sizeof(uint16_t));
  }
  return ffi::Error::Success();
}

#if defined(__AVX512BF16__)
// Bf16Dots: tiles of 4 rows by 4 outputs. Each of the 16 products keeps 16 lanes of partial
// sums; a step of VDPBF16PS adds the products of 32 inputs (a lane: two neighbours, exact
// in float32) into them, and the lanes are added up in a fixed order at the end. Rows and
// outputs past the end of a tile repeat its first ones and are not stored; inputs past a
// multiple of 32 are loaded as zeros. The rows are taken 64 at a time (at most 384 KiB of
// them for 3072 inputs, kept in the core's cache while each output's weights are read once
// for all of them), and the first row tile asks for the weights of the outputs kAhead
// further on: with only a few rows, four streams of weights read from memory at 10-14 GB/s
// without it (gpt2_small's output embedding, 4 rows: 4.2-7.6 ms, 3.4-3.6 with it).
constexpr int kTile = 4;
constexpr int64_t kRowGroup = 64;
// how many outputs ahead the first row tile asks the cache for weights
constexpr int64_t kAhead = 16;

// the 16 lanes' sums of a[4 r + o], as lane 4 r + o
inline __m512 Sums(const __m512 a[16]) {
  __m512 rows[kTile];
  for (int r = 0; r < kTile; ++r) {
    const __m512* t = a + kTile * r;
    __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(t[0], t[1]), _mm512_unpackhi_ps(t[0], t[1]));
    __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(t[2], t[3]), _mm512_unpackhi_ps(t[2], t[3]));
    // each 128-bit block j: the 4 outputs' sums over that block
    rows[r] = _mm512_add_ps(_mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  __m512 r01 = _mm512_add_ps(_mm512_shuffle_f32x4(rows[0], rows[1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(rows[0], rows[1], _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 r23 = _mm512_add_ps(_mm512_shuffle_f32x4(rows[2], rows[3], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(rows[2], rows[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(r01, r23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(r01, r23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// the first n (at most 16 or 32) lanes
inline __mmask16 Lanes16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
inline __mmask32 Lanes32(int64_t n) { return n >= 32 ? ~__mmask32(0) : __mmask32((uint64_t(1) << n) - 1); }

inline __m512bh Load(const uint16_t* p, __mmask32 mask) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

// 16 bfloat16 values as float32 (the high halves: exact)
inline __m512 Widen(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }

// y[r, o] for rows [r0, r1) and outputs [o0, o1)
void Dots(const uint16_t* x, const uint16_t* w, float* y, int64_t in, int64_t out, int64_t r0, int64_t r1,
          int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; o += kTile) {
    const uint16_t* w_o[kTile];
    for (int j = 0; j < kTile; ++j) w_o[j] = w + (o + j < o1 ? o + j : o) * in;
    for (int64_t r = r0; r < r1; r += kTile) {
      const uint16_t* x_r[kTile];
      for (int k = 0; k < kTile; ++k) x_r[k] = x + (r + k < r1 ? r + k : r) * in;
      __m512 sums[kTile * kTile];
      for (auto& s : sums) s = _mm512_setzero_ps();
      bool first = r == r0;
      auto step = [&](int64_t i, __mmask32 mask) {
        if (first)  // an address past the matrix's end is not read: a prefetch never faults
          for (int j = 0; j < kTile; ++j)
            _mm_prefetch(reinterpret_cast<const char*>(uintptr_t(w_o[j] + i) + 2 * kAhead * in), _MM_HINT_T0);
        __m512bh w_i[kTile];
        for (int j = 0; j < kTile; ++j) w_i[j] = Load(w_o[j] + i, mask);
        for (int k = 0; k < kTile; ++k) {
          __m512bh x_i = Load(x_r[k] + i, mask);
          for (int j = 0; j < kTile; ++j) sums[kTile * k + j] = _mm512_dpbf16_ps(sums[kTile * k + j], x_i, w_i[j]);
        }
      };
      int64_t i = 0;
      for (; i + 32 <= in; i += 32) step(i, Lanes32(32));
      if (i < in) step(i, Lanes32(in - i));
      __m512 total = Sums(sums);
      __mmask8 outputs = __mmask8((1u << std::min<int64_t>(kTile, o1 - o)) - 1);
      for (int k = 0; k < kTile && r + k < r1; ++k) {
        __m128 row;
        switch (k) {  // the block's index must be a constant
          case 0: row = _mm512_extractf32x4_ps(total, 0); break;
          case 1: row = _mm512_extractf32x4_ps(total, 1); break;
          case 2: row = _mm512_extractf32x4_ps(total, 2); break;
          default: row = _mm512_extractf32x4_ps(total, 3); break;
        }
        _mm_mask_storeu_ps(y + (r + k) * out + o, outputs, row);
      }
    }
  }
}

ffi::Error Bf16DotsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto x_dims = x.dimensions(), w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1])
    return ffi::Error::InvalidArgument("bf16 dots: x must be R x I and w O x I");
  auto* x_data = reinterpret_cast<const uint16_t*>(x.typed_data());
  auto* w_data = reinterpret_cast<const uint16_t*>(w.typed_data());
  float* y_data = y->typed_data();
  int64_t rows = x_dims[0], in = w_dims[1], out = w_dims[0];
  for (int64_t r0 = 0; r0 < rows; r0 += kRowGroup) {
    int64_t r1 = std::min(rows, r0 + kRowGroup);
    Split(pool, out, in * (r1 - r0), kTile,
          [=](int64_t o0, int64_t o1) { Dots(x_data, w_data, y_data, in, out, r0, r1, o0, o1); });
  }
  return ffi::Error::Success();
}

// Bf16Attend: softmax(q . k^T + add) . v for each of X products, over a decoding cache: q is
// X x T x H (a few query rows, scaled), k and v X x S x H, add A x T x S (the mask as 0 or a
// large negative number, and any bias; product x takes row x / (X / A)), y X x T x H. As the
// XLA form does: scores summed in float32, the probabilities rounded to bfloat16 before they
// weigh v, and y summed in float32.
constexpr float kLog2e = 1.44269504088896341f;

// e^x for x <= 0 within 2 float32 roundings (Cephes' expf: e^x = 2^n e^r, |r| <= ln 2 / 2); below
// -104, 0, as e^x rounds to in float32.
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts, exact first
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// y for the products [x0, x1); `p` holds S floats
void Attend(const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* add, float* y, int64_t xs,
            int64_t adds, int64_t rows, int64_t keys, int64_t width, int64_t x0, int64_t x1, float* p) {
  for (int64_t x = x0; x < x1; ++x) {
    const uint16_t* k_x = k + x * keys * width;
    const uint16_t* v_x = v + x * keys * width;
    for (int64_t t = 0; t < rows; ++t) {
      const uint16_t* q_t = q + (x * rows + t) * width;
      const float* add_t = add + ((x / (xs / adds)) * rows + t) * keys;
      float most = -INFINITY;
      for (int64_t s = 0; s < keys; ++s) {
        __m512 sums = _mm512_setzero_ps();
        for (int64_t h = 0; h < width; h += 32) {
          __mmask32 mask = Lanes32(width - h);
          sums = _mm512_dpbf16_ps(sums, Load(q_t + h, mask), Load(k_x + s * width + h, mask));
        }
        p[s] = _mm512_reduce_add_ps(sums) + add_t[s];
        most = std::max(most, p[s]);
      }
      __m512 total = _mm512_setzero_ps();
      for (int64_t s = 0; s < keys; s += 16) {
        __mmask16 mask = Lanes16(keys - s);
        __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p + s), _mm512_set1_ps(most)));
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mask, e));
        _mm512_mask_storeu_ps(p + s, mask, e);
      }
      __m512 scale = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
      for (int64_t s = 0; s < keys; s += 16) {  // the probabilities in bfloat16 (to nearest), widened back
        __mmask16 mask = Lanes16(keys - s);
        __m256i bf16 = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p + s), scale));
        _mm512_mask_storeu_ps(p + s, mask, Widen(bf16));
      }
      for (int64_t h = 0; h < width; h += 16) {
        __mmask16 mask = Lanes16(width - h);
        __m512 sums = _mm512_setzero_ps();
        for (int64_t s = 0; s < keys; ++s) {
          __m512 v_s = Widen(_mm256_maskz_loadu_epi16(mask, v_x + s * width + h));
          sums = _mm512_fmadd_ps(_mm512_set1_ps(p[s]), v_s, sums);
        }
        _mm512_mask_storeu_ps(y + (x * rows + t) * width + h, mask, sums);
      }
    }
  }
}

ffi::Error Bf16AttendImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                          ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::F32> add, ffi::ResultBuffer<ffi::F32> y) {
  auto q_dims = q.dimensions(), k_dims = k.dimensions(), v_dims = v.dimensions(), add_dims = add.dimensions();
  if (q_dims.size() != 3 || k_dims.size() != 3 || v_dims.size() != 3 || add_dims.size() != 3)
    return ffi::Error::InvalidArgument("bf16 attend: q, k, v and add must have 3 dimensions");
  int64_t xs = q_dims[0], rows = q_dims[1], width = q_dims[2], keys = k_dims[1], adds = add_dims[0];
  if (k_dims[0] != xs || v_dims[0] != xs || k_dims[2] != width || v_dims[1] != keys || v_dims[2] != width ||
      add_dims[1] != rows || add_dims[2] != keys || adds < 1 || xs % adds)
    return ffi::Error::InvalidArgument("bf16 attend: q X x T x H, k and v X x S x H, add A x T x S with A dividing X");
  auto* q_data = reinterpret_cast<const uint16_t*>(q.typed_data());
  auto* k_data = reinterpret_cast<const uint16_t*>(k.typed_data());
  auto* v_data = reinterpret_cast<const uint16_t*>(v.typed_data());
  const float* add_data = add.typed_data();
  float* y_data = y->typed_data();
  Split(pool, xs, 2 * rows * keys * width, 1, [=](int64_t x0, int64_t x1) {
    std::unique_ptr<float[]> p(new float[keys + 16]);
    Attend(q_data, k_data, v_data, add_data, y_data, xs, adds, rows, keys, width, x0, x1, p.get());
  });
  return ffi::Error::Success();
}
#endif

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16Take, Bf16TakeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16Rows, Bf16RowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

#if defined(__AVX512BF16__)
XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16Dots, Bf16DotsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bf16Attend, Bf16AttendImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
#endif
