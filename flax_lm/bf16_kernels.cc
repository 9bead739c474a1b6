// XLA FFI handlers for the CPU over bfloat16 weights, for decoding a few rows (see
// bf16_kernels.py for why and how they are built):
// - Bf16Rows: y = x . w^T for a few float32 rows x (R x I) and a bfloat16 (out, in) matrix w
//   (O x I), in float32;
// - Bf16Take: rows of a bfloat16 table, copied as they are.
//
// Bf16Rows: each weight is read once for all R rows and widened to float32 in registers (a
// bfloat16 value is the high half of a float32: exact). Each row keeps kLanes partial sums,
// which the compiler vectorises, added up in a fixed order at the end: the same inputs give
// the same bits.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

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
// (or running this call's own caller) delays the product but never blocks it.
struct Work {
  const float* x;
  const uint16_t* w;
  float* y;
  int64_t rows, in, out, chunk, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      int64_t o0 = c * chunk, o1 = std::min(out, o0 + chunk);
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows)
        RowsAny(int(std::min<int64_t>(kMaxRows, rows - r0)), x + r0 * in, w, y + r0 * out, in, out, o0, o1);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Bf16RowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto x_dims = x.dimensions(), w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1])
    return ffi::Error::InvalidArgument("bf16 rows: x must be R x I and w O x I");
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->w = reinterpret_cast<const uint16_t*>(w.typed_data());
  work->y = y->typed_data();
  work->rows = x_dims[0];
  work->in = w_dims[1];
  work->out = w_dims[0];
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t most = std::max<int64_t>(1, work->out * work->in / kMinChunk);
  work->chunks = std::min(4 * threads, std::min(most, std::max<int64_t>(1, work->out)));
  work->chunk = (work->out + work->chunks - 1) / work->chunks;
  work->chunks = work->out ? (work->out + work->chunk - 1) / work->chunk : 0;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
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
