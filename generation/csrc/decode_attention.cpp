// Attention of a few query tokens per row over that row's cache, on the CPU: the engine's
// decode and verify passes (generation/cpu_attention.py says when it runs, docs/perf-notes.md
// what it measured).
//
// torch's CPU flash kernel runs these shapes as small GEMMs (a handful of query rows against
// blocks of 512 keys) and reads the cache far below memory speed; here each (row, key/value
// head) streams its keys and values once, every query head of its group against every key,
// with an online softmax over blocks of BLOCK keys, accumulating in float32. A query's result
// depends only on that query, its row's keys and values and its mask row: not on the other
// queries of the call, nor on how far the call's keys reach beyond the keys it sees (a hidden
// key adds an exact zero), so a token gets the same attention in a plain step, a verify tree or
// a padded batch.
//
// GCC vector extensions, so one source builds for AVX-512, AVX2 or NEON (-march=native).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

constexpr int BLOCK = 32;  // keys per online-softmax block
constexpr int TILE = 4;    // query heads that share one read of a key
constexpr int64_t SPAN = 256;  // keys a thread takes at a time; spans merge in key order
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline f32x16 splat(float x) { return f32x16{} + x; }

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline f32x16 load16(const c10::BFloat16* p) {  // bfloat16 is the top half of a float32
  u16x16 raw;
  std::memcpy(&raw, p, sizeof raw);
  u32x16 wide = __builtin_convertvector(raw, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

// The lane sums of p0..p3, in that order; every input is summed in the same order.
inline f32x4 sum4(f32x16 p0, f32x16 p1, f32x16 p2, f32x16 p3) {
  f32x16 a = __builtin_shufflevector(p0, p1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(p0, p1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  f32x16 b = __builtin_shufflevector(p2, p3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(p2, p3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  f32x16 c = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
             __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  f32x16 d = c + __builtin_shufflevector(c, c, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  f32x16 e = d + __builtin_shufflevector(d, d, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return f32x4{e[0], e[4], e[8], e[12]};
}

// exp(x) for x <= 0 (scores minus their running maximum): Cephes' expf polynomial after
// reducing by ln 2, about 2 ulp; 0 below -87 (and for -inf).
inline f32x16 exp16(f32x16 x) {
  f32x16 v = x < -87.0f ? splat(-87.0f) : x;
  f32x16 k = __builtin_convertvector(
      __builtin_convertvector(v * 1.44269504088896341f - 0.5f, i32x16), f32x16);  // round(v / ln 2)
  f32x16 r = v - k * 0.693145751953125f - k * 1.428606765330187045e-06f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  i32x16 bits = (__builtin_convertvector(k, i32x16) + 127) << 23;  // 2^k
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.0f ? f32x16{} : p * scale;
}

// One (row, key/value head, span of keys): the span's running maximum, exp-sum and weighted
// value sum per query of the group, into `part` ([m_tiles] maxima, [m_tiles] sums, then
// [m_tiles * D] values).
template <typename T, int D>
struct Span {
  static constexpr int DV = D / 16;
  const T* Q; const T* K; const T* V; const T* Mk;
  c10::IntArrayRef qs, ks, vs;
  int64_t q, groups, kv_heads, mask_row, mask_query, m_all, m_tiles;
  float scale;

  void operator()(int64_t r, int64_t h, int64_t j_begin, int64_t j_end, float* part) const {
    std::vector<f32x16> qv(m_tiles * DV), acc(m_tiles * DV), kb(BLOCK * DV), vb(BLOCK * DV);
    std::vector<float> s(m_tiles * BLOCK);
    float* running_max = part;
    float* total = part + m_tiles;
    // query m of the group: head h * groups + m / q, token m % q
    for (int64_t m = 0; m < m_tiles; ++m) {
      const T* src = Q + r * qs[0] + (h * groups + m / q) * qs[1] + (m % q) * qs[2];
      for (int c = 0; c < DV; ++c) {
        qv[m * DV + c] = m < m_all ? load16(src + 16 * c) * scale : f32x16{};
        acc[m * DV + c] = f32x16{};
      }
      running_max[m] = NEG_INF;
      total[m] = 0.0f;
    }
    const T* Kr = K + r * ks[0] + h * ks[1];
    const T* Vr = V + r * vs[0] + h * vs[1];
    for (int64_t j0 = j_begin; j0 < j_end; j0 += BLOCK) {
      const int n = static_cast<int>(std::min<int64_t>(BLOCK, j_end - j0));
      for (int j = 0; j < n; ++j)
        for (int c = 0; c < DV; ++c) {
          kb[j * DV + c] = load16(Kr + (j0 + j) * ks[2] + 16 * c);
          vb[j * DV + c] = load16(Vr + (j0 + j) * vs[2] + 16 * c);
        }
      for (int64_t m0 = 0; m0 < m_tiles; m0 += TILE) {
        const f32x16* q0 = &qv[m0 * DV];
        for (int j = 0; j < n; ++j) {
          const f32x16* kj = &kb[j * DV];
          f32x16 p0 = q0[0] * kj[0], p1 = q0[DV] * kj[0];
          f32x16 p2 = q0[2 * DV] * kj[0], p3 = q0[3 * DV] * kj[0];
          for (int c = 1; c < DV; ++c) {
            p0 += q0[c] * kj[c];
            p1 += q0[DV + c] * kj[c];
            p2 += q0[2 * DV + c] * kj[c];
            p3 += q0[3 * DV + c] * kj[c];
          }
          const f32x4 dots = sum4(p0, p1, p2, p3);
          for (int t = 0; t < TILE; ++t) s[(m0 + t) * BLOCK + j] = dots[t];
        }
      }
      for (int64_t m = 0; m < m_all; ++m) {
        float* sm = &s[m * BLOCK];
        if (Mk != nullptr) {
          const T* bias = Mk + r * mask_row + (m % q) * mask_query + j0;
          for (int j = 0; j < n; ++j) sm[j] += static_cast<float>(bias[j]);
        }
        std::fill(sm + n, sm + BLOCK, NEG_INF);
        float best = running_max[m];
        for (int j = 0; j < n; ++j) best = std::max(best, sm[j]);
        if (best == NEG_INF) continue;  // nothing seen yet
        const float rescale = std::exp(running_max[m] - best);  // 0 for a first block
        running_max[m] = best;
        float block_total = 0.0f;
        for (int j = 0; j < BLOCK; j += 16) {
          const f32x16 e = exp16(load16(sm + j) - best);
          std::memcpy(sm + j, &e, sizeof e);
          for (int l = 0; l < 16; ++l) block_total += e[l];
        }
        total[m] = total[m] * rescale + block_total;
        f32x16 a[DV];
        for (int c = 0; c < DV; ++c) a[c] = acc[m * DV + c] * rescale;
        for (int j = 0; j < n; ++j) {
          const f32x16 p = splat(sm[j]);
          for (int c = 0; c < DV; ++c) a[c] += p * vb[j * DV + c];
        }
        for (int c = 0; c < DV; ++c) acc[m * DV + c] = a[c];
      }
    }
    std::memcpy(part + 2 * m_tiles, acc.data(), m_tiles * D * sizeof(float));
  }
};

template <typename T, int D>
void attend(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
            const at::Tensor& mask, float scale, at::Tensor& out) {
  constexpr int DV = D / 16;
  const int64_t rows = query.size(0), heads = query.size(1), q = query.size(2);
  const int64_t kv_heads = key.size(1), keys = key.size(2), groups = heads / kv_heads;
  const int64_t m_all = groups * q, m_tiles = (m_all + TILE - 1) / TILE * TILE;
  const bool masked = mask.defined();
  const Span<T, D> span{
      query.data_ptr<T>(), key.data_ptr<T>(), value.data_ptr<T>(),
      masked ? mask.data_ptr<T>() : nullptr, query.strides(), key.strides(), value.strides(),
      q, groups, kv_heads,
      masked && mask.size(0) > 1 ? mask.stride(0) : 0,
      masked && mask.size(2) > 1 ? mask.stride(2) : 0,
      m_all, m_tiles, scale};
  // Spans of SPAN keys from key 0, whatever the call's length: a row's work splits across
  // threads even alone, and a query's result does not depend on the call.
  const int64_t spans = (keys + SPAN - 1) / SPAN, items = rows * kv_heads;
  const int64_t part_size = m_tiles * (D + 2);
  std::vector<float> parts(items * spans * part_size);
  at::parallel_for(0, items * spans, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t item = unit / spans, k = unit % spans;
      span(item / kv_heads, item % kv_heads, k * SPAN, std::min(keys, (k + 1) * SPAN),
           &parts[unit * part_size]);
    }
  });
  T* O = out.data_ptr<T>();
  const auto os = out.strides();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {  // spans merged in order
    std::vector<f32x16> acc(DV);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / kv_heads, h = item % kv_heads;
      const float* first = &parts[item * spans * part_size];
      for (int64_t m = 0; m < m_all; ++m) {
        float best = NEG_INF;
        for (int64_t k = 0; k < spans; ++k) best = std::max(best, first[k * part_size + m]);
        float total = 0.0f;
        for (int c = 0; c < DV; ++c) acc[c] = f32x16{};
        for (int64_t k = 0; k < spans; ++k) {
          const float* part = first + k * part_size;
          if (part[m] == NEG_INF) continue;  // a span of hidden keys only
          const float weight = std::exp(part[m] - best);
          total += part[m_tiles + m] * weight;
          for (int c = 0; c < DV; ++c)
            acc[c] += load16(part + 2 * m_tiles + m * D + 16 * c) * weight;
        }
        T* dst = O + r * os[0] + (h * groups + m / q) * os[1] + (m % q) * os[2];
        const float inv = 1.0f / total;
        for (int c = 0; c < DV; ++c) {
          const f32x16 x = acc[c] * inv;
          for (int l = 0; l < 16; ++l) dst[16 * c + l] = static_cast<T>(x[l]);
        }
      }
    }
  });
}

template <typename T>
void dispatch_dim(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                  const at::Tensor& mask, float scale, at::Tensor& out) {
  switch (query.size(3)) {
    case 64: return attend<T, 64>(query, key, value, mask, scale, out);
    case 128: return attend<T, 128>(query, key, value, mask, scale, out);
    default: TORCH_CHECK(false, "decode_attention: head_dim 64 or 128, got ", query.size(3));
  }
}

}  // namespace

// query [rows, heads, q, d], key/value [rows, kv_heads, keys, d] (any strides, d contiguous),
// mask: undefined, or additive [rows or 1, 1, q or 1, >= keys] in the query's dtype.
// Returns [rows, heads, q, d] laid out as [rows, q, heads, d] (what the model reshapes next).
at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const c10::optional<at::Tensor>& mask,
                            double scale) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.sizes() == key.sizes(),
              "decode_attention: 4-d query, key and value of one shape");
  TORCH_CHECK(query.size(0) == key.size(0) && query.size(3) == key.size(3) &&
                  query.size(1) % key.size(1) == 0 && key.size(2) > 0,
              "decode_attention: query and key/value disagree");
  TORCH_CHECK(query.stride(3) == 1 && key.stride(3) == 1 && value.stride(3) == 1,
              "decode_attention: the head dimension must be contiguous");
  TORCH_CHECK(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(),
              "decode_attention: one dtype");
  at::Tensor m = mask.has_value() ? *mask : at::Tensor();
  if (m.defined()) {
    TORCH_CHECK(m.dim() == 4 && m.scalar_type() == query.scalar_type() && m.stride(3) == 1 &&
                    (m.size(0) == 1 || m.size(0) == query.size(0)) && m.size(1) == 1 &&
                    (m.size(2) == 1 || m.size(2) == query.size(2)) && m.size(3) >= key.size(2),
                "decode_attention: an additive mask [rows or 1, 1, q or 1, keys] in the query's dtype");
  }
  auto out = at::empty({query.size(0), query.size(2), query.size(1), query.size(3)},
                       query.options()).transpose(1, 2);
  const float s = static_cast<float>(scale);
  if (query.scalar_type() == at::kFloat) {
    dispatch_dim<float>(query, key, value, m, s, out);
  } else if (query.scalar_type() == at::kBFloat16) {
    dispatch_dim<c10::BFloat16>(query, key, value, m, s, out);
  } else {
    TORCH_CHECK(false, "decode_attention: float32 or bfloat16, got ", query.scalar_type());
  }
  return out;
}
